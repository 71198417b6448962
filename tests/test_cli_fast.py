"""The CLI is fast where it can be: usage errors before any model loads, searches through a running
`nels serve` of the same library (found through its server.json), one JSON answer shape for both paths,
and a quiet exit when the reader of its output goes away (`nels ... | head`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devserver import Server, build_library, synth_sounds, write_wav

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sentence_transformers", "transformers", "faiss")
# runs the CLI in a fresh interpreter and reports, after it, which heavy modules it imported
PROBE = ("import json, sys\nfrom nels.cli import main\nrc = main(sys.argv[1:])\nsys.stdout.flush()\n"
         "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)\n"
         % (HEAVY,))


def run_cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=e, cwd=ROOT,
                       timeout=600)
    last = [ln for ln in p.stderr.splitlines() if ln.startswith("{")]
    return p, (json.loads(last[-1]) if last else {})


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clifast")
    lib = build_library(root)  # 5 synthesised sounds, baseline encoder
    write_wav(root / "query.wav", synth_sounds()["clicks"][: 3 * 16000])
    return lib


@pytest.mark.parametrize("args, message", [
    (["search"], "empty query"),
    (["search", "   "], "empty query"),
    (["search", "--audio", "/no/such/file.wav"], "/no/such/file.wav: no such file"),
    (["search", "dog", "-k", "0"], "-k must be between"),
    (["search", "dog", "--page", "0"], "--page must be"),
    (["search", "dog", "--start", "3"], "--start and --end cut the query audio"),
    (["search", "dog", "--mode", "acoustic"], "acoustic mode needs an audio query"),
])
def test_usage_errors_load_no_model(library, args, message):
    p, probe = run_cli("--library", str(library), *args)
    assert probe["rc"] == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert probe["heavy"] == [], f"a usage error imported {probe['heavy']}"


def test_tag_of_a_missing_file_loads_no_model(tmp_path):
    p, probe = run_cli("tag", str(tmp_path / "nope.wav"))
    assert probe["rc"] == 2 and "nope.wav: no such file" in p.stderr and probe["heavy"] == []


def test_missing_library_and_missing_ingest_inputs_load_no_model(tmp_path):
    p, probe = run_cli("--library", str(tmp_path / "nolib"), "search", "dog")
    assert probe["rc"] == 2 and "no library at" in p.stderr and probe["heavy"] == []
    (tmp_path / "empty").mkdir()
    p, probe = run_cli("--library", str(tmp_path / "lib"), "ingest", str(tmp_path / "nope.wav"), str(tmp_path / "empty"))
    assert probe["rc"] == 2 and probe["heavy"] == []
    assert "nope.wav: no such file" in p.stderr and "no audio found" in p.stderr
    assert not (tmp_path / "lib").exists()  # nothing was created for nothing


def test_json_answer_is_the_api_object_and_the_table_renders_it(library, tmp_path):
    p, probe = run_cli("--library", str(library), "search", "--audio", str(library.parent / "query.wav"), "-k", "3",
                       "--json", "--local")
    assert probe["rc"] == 0, p.stderr
    d = json.loads(p.stdout)
    assert isinstance(d, dict)
    assert {"results", "notice", "mode", "query_labels", "query", "k", "page", "has_more"} <= set(d)
    assert d["k"] == 3 and d["page"] == 1 and d["query"] == "audio: query.wav"
    assert "clicks" in d["results"][0]["title"]
    assert all(isinstance(r["score"], float) for r in d["results"])  # numbers, not strings
    p, probe = run_cli("--library", str(library), "search", "--audio", str(library.parent / "query.wav"), "-k", "3",
                       "--local")
    table = p.stdout.splitlines()
    header = next(i for i, ln in enumerate(table) if ln.lstrip().startswith("#"))
    assert "clicks.wav" in table[header + 1]
    assert "loading models" in p.stderr


def test_search_uses_the_running_server_of_the_library(library):
    srv = Server(library, workers=1).start()
    try:
        info = json.loads((library / "server.json").read_text())
        assert info["url"] == srv.url and info["pid"] == srv.proc.pid
        query = str(library.parent / "query.wav")
        p, probe = run_cli("--library", str(library), "search", "--audio", query, "-k", "3", "--json")
        assert probe["rc"] == 0, p.stderr
        assert probe["heavy"] == [], f"a server search imported {probe['heavy']}"
        via_server = json.loads(p.stdout)
        local, _ = run_cli("--library", str(library), "search", "--audio", query, "-k", "3", "--json", "--local")
        here = json.loads(local.stdout)
        assert set(via_server) == set(here)
        assert [r["clip_id"] for r in via_server["results"]] == [r["clip_id"] for r in here["results"]]
        # the same through an explicit --server URL, and the table prints from the same dict
        p, probe = run_cli("--library", str(library), "search", "--audio", query, "-k", "3", "--server", srv.url)
        assert probe["rc"] == 0 and "clicks.wav" in p.stdout and probe["heavy"] == []
        # a refusal by the server is the server's message, not a traceback
        p, probe = run_cli("--library", str(library), "search", "dog", "--server", srv.url)
        assert probe["rc"] == 2 and "Traceback" not in p.stderr and "HTTP 4" in p.stderr
    finally:
        srv.stop()
    assert not (library / "server.json").exists(), "the server left its server.json behind"


def test_a_stale_server_file_is_ignored(library, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (library / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid,
                                                     "library": str(library.resolve())}))
    try:
        p, probe = run_cli("--library", str(library), "search", "--audio", str(library.parent / "query.wav"), "-k",
                           "1", "--json")
        assert probe["rc"] == 0, p.stderr
        assert json.loads(p.stdout)["results"]
    finally:
        (library / "server.json").unlink(missing_ok=True)


def test_closed_pipe_is_not_a_traceback(library):
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(library), "stats", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    proc.wait(120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141
