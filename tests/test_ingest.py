import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import synth, write_wav
from nels.sources.source import Item
from nels.sources.ytdlp import entry_to_item, search_target
from nels.library import Library
from nels.ingest.runner import IngestOptions, ingest


def nels(*args, env=None, check=False, timeout=300):
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-m", "nels.cli", *args], capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_ingest_folder_then_query_by_example(tmp_path, sounds):
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False))
    assert len(rep.added) == 6 and not rep.failed
    res = lib.search(audio=sounds / "chirp.wav", k=3)
    assert res[0]["title"] == "chirp.wav" and res[0]["score"] > 0.95
    assert {"clip_id", "source", "title", "start", "end", "score", "labels", "explanation"} <= set(res[0])
    # a re-run adds nothing and downloads nothing
    rep2 = ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False))
    assert rep2.added == [] and lib.stats()["clips"] == 6
    # the same content under another name is linked, not stored twice
    (sounds / "copy").mkdir()
    (sounds / "copy" / "again.wav").write_bytes((sounds / "hum.wav").read_bytes())
    rep3 = ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False))
    assert rep3.duplicates == 1 and lib.stats()["clips"] == 6


def test_bad_files_are_recorded_and_the_batch_continues(tmp_path, sounds):
    (sounds / "empty.wav").write_bytes(b"")
    (sounds / "corrupt.mp3").write_bytes(b"\xff\xfb" + os.urandom(3000))
    (sounds / "text.ogg").write_text("hello")
    write_wav(sounds / "silent.wav", np.zeros(16000 * 3, np.float32))
    p = nels("--library", str(tmp_path / "lib"), "ingest", str(sounds), "--model", "baseline", "--json")
    assert p.returncode == 1  # something failed
    out = json.loads(p.stdout)
    assert out["added"] == 6
    failed = {os.path.basename(f["uri"]): f["error"] for f in out["failed"]}
    assert set(failed) == {"empty.wav", "corrupt.mp3", "text.ogg", "silent.wav"}
    assert "empty" in failed["empty.wav"] and "no sound" in failed["silent.wav"]
    st = json.loads(nels("--library", str(tmp_path / "lib"), "stats", "--json", check=True).stdout)
    assert st["items"]["failed"] == 4 and len(st["failures"]) == 4
    human = nels("--library", str(tmp_path / "lib"), "stats", check=True).stdout
    assert "empty.wav" in human and "failures" in human


def test_max_duration_and_max_items(tmp_path, sounds):
    write_wav(sounds / "long.wav", synth("noise", 20.0))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(max_duration=10, max_items=3,
                                                                             progress=False))
    assert len(rep.added) == 3
    rep = ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(max_duration=10, progress=False))
    assert len(rep.added) == 3 and [os.path.basename(u) for u, _ in rep.skipped] == ["long.wav"]


def test_usage_errors_exit_2(tmp_path):
    assert nels("ingest").returncode == 2
    assert nels("search", "--bogus-flag").returncode == 2
    p = nels("--library", str(tmp_path / "missing"), "search", "dog")
    assert p.returncode == 2 and "no library" in p.stderr and "Traceback" not in p.stderr
    p = nels("--library", str(tmp_path / "missing"), "stats")
    assert p.returncode == 2


def test_http_urls_and_url_lists(tmp_path, sounds, http_server):
    base, www, srv = http_server
    for name in ["tone.wav", "noise.wav"]:
        (www / name).write_bytes((sounds / name).read_bytes())
    lst = tmp_path / "urls.txt"
    lst.write_text(f"# my list\n{base}/tone.wav\n{base}/noise.wav\n{base}/missing.wav\nhttp://127.0.0.1:9/x.wav\n")
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(lst)], model="baseline", options=IngestOptions(progress=False, retries=2))
    assert len(rep.added) == 2
    errors = {u.rsplit("/", 1)[-1]: e for u, e in rep.failed}
    assert "HTTP 404" in errors["missing.wav"] and "unreachable" in errors["x.wav"]
    clip = lib.clip(rep.added[0])
    assert clip["source_uri"].startswith(base) and clip["webpage_url"].startswith(base) and clip["fetched_at"]
    # 404 is permanent (1 request); the unreachable URL was retried with backoff (2 attempts)
    assert srv.hits.count("/missing.wav") == 1
    row = lib.conn.execute("SELECT attempts FROM items WHERE uri LIKE 'http://127.0.0.1:9/%'").fetchone()
    assert row[0] == 2
    # nothing stored is downloaded twice
    hits = len(srv.hits)
    ingest(lib, [str(lst)], model="baseline", options=IngestOptions(progress=False, retries=2))
    assert len(srv.hits) == hits


def test_crawl_through_ytdlp_against_a_local_server(tmp_path, sounds, http_server):
    base, www, srv = http_server
    for name in ["tone.wav", "clicks.wav", "chirp.wav"]:
        (www / name).write_bytes((sounds / name).read_bytes())
        srv.files.add(name)
    env = {"NELS_YTDLP_SEARCH": base + "/search?q={query}&n={n}"}
    p = nels("--library", str(tmp_path / "lib"), "crawl", "dog barking", "--per-query", "2", "--model", "baseline",
             "--rate-limit", "100", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["added"] == 2
    lib = Library(tmp_path / "lib")
    rows = lib.conn.execute("SELECT query, source_kind, webpage_url FROM clips").fetchall()
    assert {r[0] for r in rows} == {"dog barking"} and {r[1] for r in rows} == {"ytdlp"}
    # resumable: a second crawl fetches only what is new
    p = nels("--library", str(tmp_path / "lib"), "crawl", "dog barking", "--per-query", "3", "--model", "baseline",
             "--json", env=env)
    assert json.loads(p.stdout)["added"] == 1


def test_youtube_query_building_and_result_parsing(monkeypatch):
    monkeypatch.delenv("NELS_YTDLP_SEARCH", raising=False)
    assert search_target("  dog   barking ", 20) == "ytsearch20:dog barking"
    flat = {"_type": "url", "ie_key": "Youtube", "id": "abc123", "url": "https://www.youtube.com/watch?v=abc123",
            "title": "Dog barking compilation", "duration": 187.0, "uploader": "Dogs Inc", "channel_id": "UC1"}
    item = entry_to_item(flat, "dog barking")
    assert item == Item("https://www.youtube.com/watch?v=abc123", "ytdlp", query="dog barking",
                        title="Dog barking compilation", uploader="Dogs Inc", duration=187.0, licence=None,
                        webpage_url="https://www.youtube.com/watch?v=abc123",
                        extra={"id": "abc123", "channel_id": "UC1"})
    assert entry_to_item({"title": "no url"}, None) is None
    with pytest.raises(Exception, match="empty"):
        search_target("   ", 5)


def test_kill_9_during_ingest_leaves_a_consistent_library_and_rerun_finishes(tmp_path):
    src = tmp_path / "many"
    for i in range(60):
        write_wav(src / f"s{i:02d}.wav", synth(["tone", "noise", "chirp", "clicks"][i % 4], 4.0, seed=i) * (0.5 + i / 120))
    lib_dir = tmp_path / "lib"
    cmd = [sys.executable, "-m", "nels.cli", "--library", str(lib_dir), "ingest", str(src), "--model", "baseline"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a safety limit only: the wait is on the library's state
    while True:  # wait until some clips are committed, then kill hard
        assert proc.poll() is None, "the ingest ended before 5 clips were committed"
        assert time.monotonic() < deadline, "gave up waiting for 5 committed clips"
        time.sleep(0.2)
        if (lib_dir / "nels.db").exists():
            try:
                if Library(lib_dir).newest_ids()["clips"] >= 5:
                    break
            except Exception:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lib = Library(lib_dir)
    n_clips = lib.stats()["clips"]
    assert 5 <= n_clips < 60
    # consistent: every clip has segments and vectors, every segment its vector
    assert lib.conn.execute("SELECT COUNT(*) FROM clips c WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.clip_id=c.id)").fetchone()[0] == 0
    assert lib.conn.execute("SELECT COUNT(*) FROM segments s LEFT JOIN vectors v ON v.segment_id=s.id WHERE v.segment_id IS NULL").fetchone()[0] == 0
    lib.close()
    p = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lib = Library(lib_dir)
    assert lib.stats()["clips"] == 60
    assert lib.conn.execute("SELECT COUNT(DISTINCT content_hash) FROM clips").fetchone()[0] == 60
    assert not list(lib_dir.glob("ingest-*"))  # the killed run's temp folder was cleaned by the re-run
    assert len(lib.store("baseline")) == lib.stats()["segments"]
