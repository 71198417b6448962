"""A library on object storage (`--library s3://bucket/prefix`), against a real S3 server on 127.0.0.1
(moto's server from PyPI, started as a subprocess): ingest, search by text and by sound, re-open from the
URI alone, serve the media, remove; the catalogue is a local SQLite file (the library's local folder, or
$NELS_CATALOGUE)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("lancedb")

from devserver import free_port, synth_sounds, write_wav  # noqa: E402

from nels.ingest.runner import IngestOptions, ingest  # noqa: E402
from nels.library import Library  # noqa: E402
from nels.store.objectstore import is_remote, local_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_server():
    """`python -m moto.server` on a free loopback port; yields its URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # readiness: the server answers its own API
        if proc.poll() is not None:
            pytest.fail(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the S3 server did not answer within 60 s")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    proc.stderr.close()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch, request):
    """A fresh bucket on the server, the AWS variables pointing at it, NELS_CACHE in tmp_path. Yields
    (boto3 client, bucket name)."""
    import boto3

    for k, v in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_REGION": "us-east-1", "NELS_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    for k in ("NELS_CATALOGUE", "NELS_VECTOR_STORE", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    client = boto3.client("s3")
    bucket = "nels-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client.create_bucket(Bucket=bucket)
    return client, bucket


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def sounds(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in synth_sounds().items():
        write_wav(folder / f"{name}.wav", x.astype(np.float32))
    return folder


def test_a_uri_is_remote_and_keyed_to_its_own_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NELS_CACHE", str(tmp_path))
    assert is_remote("s3://b/p") and is_remote("gs://b") and not is_remote(tmp_path) and not is_remote("file:///x")
    a, b = local_folder("s3://b/p"), local_folder("s3://b/q")
    assert a != b and a.parent == b.parent == tmp_path / "libraries" and a == local_folder("s3://b/p/")
    assert a.name.startswith("b-p-")


def test_library_on_s3_ingest_search_reopen_remove(s3, tmp_path):
    client, bucket = s3
    uri = f"s3://{bucket}/libs/one"
    src = sounds(tmp_path / "sounds")
    lib = Library(uri)
    rep = ingest(lib, [str(src)], model="default", options=IngestOptions(progress=False))
    assert len(rep.added) == 5 and not rep.failed
    lib.save_indexes()
    assert lib.location == uri and lib.stats()["library"] == uri
    assert lib.get_meta("vector_store") == "lance"  # vectors beside the media unless NELS_VECTOR_STORE says

    # media and vector tables are objects in the bucket; the catalogue is the local folder's nels.db
    stored = keys(client, bucket, "libs/one/")
    media = [k for k in stored if k.startswith("libs/one/media/")]
    assert len(media) == 5 and all(k.endswith(".wav") for k in media)
    assert any(k.startswith("libs/one/indexes/cnn.lance/") for k in stored)
    assert any(k.startswith("libs/one/indexes/joint.lance/") for k in stored)
    assert (lib.path / "nels.db").exists() and lib.path == local_folder(uri)
    # searches read a local copy of the tables (their immutable files), the bucket stays the shared one
    assert (lib.path / "indexes" / "cnn.lance").is_dir() and not list(lib.path.glob("indexes/*.faiss"))

    by_text = lib.search(text="clicks", k=5)
    assert by_text and all(r["media_url"].startswith("/media/") for r in by_text)
    clicks = next(c for c in rep.added if lib.clip(c)["title"] == "clicks.wav")
    by_sound = lib.search(audio=src / "clicks.wav", mode="acoustic", k=3)
    assert by_sound[0]["clip_id"] == clicks
    lib.close()

    # another process on this machine: only the URI; the media cache emptied, so reads come from S3
    shutil.rmtree(local_folder(uri) / "media")
    again = Library(uri, create=False)
    assert [r["segment_id"] for r in again.search(audio=src / "clicks.wav", mode="acoustic", k=3)] == \
           [r["segment_id"] for r in by_sound]
    assert again.store("cnn").count() == again.stats()["spaces"]["cnn"]["vectors"]
    path = again.media_file(again.clip(clicks)["media_path"])  # fetched back from the bucket
    assert path.read_bytes() == (src / "clicks.wav").read_bytes()
    # the local folder stands for the URI (how `nels serve --workers N` and the admin jobs reopen it)
    assert Library(local_folder(uri), create=False).location == uri

    seg_ids_of_clicks = again.catalogue.segment_ids(clicks)
    assert again.remove_clips([clicks]) == 1
    left = keys(client, bucket, "libs/one/media/")
    assert len(left) == 4 and not any(Path(k).name == Path(path).name for k in left)
    assert clicks not in {r["clip_id"] for r in again.search(audio=src / "clicks.wav", mode="acoustic", k=10)}
    again.save_indexes()
    again.close()
    third = Library(uri, create=False)  # the table on S3 no longer holds the removed clip's vectors
    assert third.store("cnn").count() == third.stats()["spaces"]["cnn"]["vectors"] == 4 * 5
    third.close()
    # nor does a fresh copy of it on another machine (a new local folder: NELS_CACHE elsewhere)
    from nels.store.lance import LanceStore

    fresh = LanceStore.open(f"{uri}/indexes/cnn", 128, mirror=tmp_path / "machine2" / "cnn")
    assert fresh.count() == 20 and (tmp_path / "machine2" / "cnn.lance").is_dir()
    _, found = fresh.search(np.ones((1, 128), np.float32), 30)
    assert len(set(found[0].tolist()) - {-1}) == 20 and not set(found[0].tolist()) & set(seg_ids_of_clicks)

    # `nels serve --workers 2` on it (its workers reopen the local folder, which stands for the URI); the media
    # cache emptied, so playback fetches from the bucket
    import json
    from devserver import Server

    shutil.rmtree(local_folder(uri) / "media")
    chirp = next(c for c in rep.added if c != clicks and c in set(clip_titles(uri, "chirp.wav")))
    srv = Server(local_folder(uri), workers=2).start(timeout=600)
    try:
        with urllib.request.urlopen(f"{srv.url}/api/stats", timeout=60) as r:
            assert json.load(r)["clips"] == 4
        with urllib.request.urlopen(f"{srv.url}/media/{chirp}", timeout=60) as r:
            assert r.read() == (src / "chirp.wav").read_bytes()
        with urllib.request.urlopen(f"{srv.url}/api/search?q=chirp&k=3", timeout=120) as r:
            assert json.load(r)["results"]
    finally:
        srv.stop()


def clip_titles(uri: str, title: str) -> list[int]:
    lib = Library(uri, create=False)
    try:
        return [cid for (cid,) in lib.catalogue.clips(("id",)) if lib.clip(cid)["title"] == title]
    finally:
        lib.close()


def test_missing_remote_library_is_refused_and_the_catalogue_can_live_elsewhere(s3, tmp_path, monkeypatch):
    client, bucket = s3
    from nels.errors import LibraryError

    with pytest.raises(LibraryError, match=f"no library at s3://{bucket}/none"):
        Library(f"s3://{bucket}/none", create=False)
    monkeypatch.setenv("NELS_CATALOGUE", str(tmp_path / "elsewhere" / "cat.db"))
    monkeypatch.setenv("NELS_VECTOR_STORE", "faiss")  # a store that cannot live there: a local cache
    (tmp_path / "elsewhere").mkdir()
    src = sounds(tmp_path / "sounds")
    lib = Library(f"s3://{bucket}/two")
    rep = ingest(lib, [str(src / "chirp.wav"), str(src / "hum.wav")], model="baseline",
                 options=IngestOptions(progress=False))
    assert len(rep.added) == 2
    lib.save_indexes()
    assert (tmp_path / "elsewhere" / "cat.db").exists() and not (lib.path / "nels.db").exists()
    assert (lib.path / "indexes" / "baseline.faiss").exists()
    assert len(keys(client, bucket, "two/media/")) == 2 and not keys(client, bucket, "two/indexes/")
    hits = lib.search(audio=src / "hum.wav", k=1)
    assert lib.clip(hits[0]["clip_id"])["title"] == "hum.wav"
    # nels reindex reads the media back from the bucket (this machine's media cache emptied first)
    from nels.ingest.reindex import reindex

    shutil.rmtree(lib.path / "media")
    out = reindex(lib, "default", progress=False)
    assert out["clips"] == 2 and not out["failed"] and "cnn" in lib.spaces()
    hits = lib.search(audio=src / "hum.wav", mode="acoustic", k=1)
    assert lib.clip(hits[0]["clip_id"])["title"] == "hum.wav"
    lib.close()


def test_cli_ingest_search_and_stats_on_s3(s3, tmp_path):
    """The same commands with `--library s3://...`."""
    client, bucket = s3
    src = sounds(tmp_path / "sounds")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    uri = f"s3://{bucket}/cli"

    def nels(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "nels.cli", "--library", uri, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    nels("ingest", str(src / "clicks.wav"), str(src / "chirp.wav"), "--model", "baseline")
    import json

    stats = json.loads(nels("stats", "--json"))
    assert stats["clips"] == 2 and stats["library"] == uri
    res = json.loads(nels("search", "--audio", str(src / "chirp.wav"), "--json"))
    results = res["results"] if isinstance(res, dict) else res
    assert results and results[0]["title"] == "chirp.wav"
    assert len(keys(client, bucket, "cli/media/")) == 2
