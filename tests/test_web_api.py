"""The website's JSON API against a real library built from synthesised sounds (baseline encoder)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

SR = 16000
TOKEN = "s3cret-test-token"


from devserver import SR, build_library, synth_sounds, wav_bytes, write_wav  # noqa: E402,F401
from devserver import tone as _tone  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return build_library(tmp_path_factory.mktemp("weblib"))


@pytest.fixture()
def client(library, monkeypatch):
    from nels.web.app import create_app

    monkeypatch.setenv("NELS_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(library, max_upload_bytes=1024 * 1024), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture()
def own_library(library, tmp_path) -> Path:
    """A private copy of the module's library, for a test that writes to it (jobs, learning iterations),
    so that no other test sees what it wrote, whatever the order."""
    import shutil

    return Path(shutil.copytree(library, tmp_path / "library"))


def _clip_id(library: Path, name: str) -> int:
    import sqlite3

    with sqlite3.connect(library / "nels.db") as conn:
        return conn.execute("SELECT id FROM clips WHERE title LIKE ? OR source_uri LIKE ?",
                            (f"%{name}%", f"%{name}%")).fetchone()[0]


# -- search ------------------------------------------------------------------------------------------------
def test_upload_query_first_hit_is_the_same_sound(client, library):
    sounds = synth_sounds()
    for name in ("clicks", "chirp", "hum"):
        r = client.post("/api/search", files={"audio": (f"{name}.wav", wav_bytes(sounds[name]), "audio/wav")},
                        data={"mode": "acoustic", "k": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "acoustic" and body["results"], body
        top = body["results"][0]
        assert top["clip_id"] == _clip_id(library, name), (name, body["results"])
        assert top["media_url"] == f"/media/{top['clip_id']}"
        assert {"clip_id", "segment_id", "start", "end", "score", "labels", "explanation"} <= set(top)


def test_upload_segment_and_paging(client, library):
    tone = _tone(1000, 2)
    r = client.post("/api/search", files={"audio": ("q.wav", wav_bytes(tone), "audio/wav")}, data={"k": "1"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["clip_id"] == _clip_id(library, "tone_late") and top["start"] >= 2.0
    r2 = client.post("/api/search", files={"audio": ("q.wav", wav_bytes(tone), "audio/wav")}, data={"k": "1", "page": "2"})
    assert r2.status_code == 200 and r2.json()["results"][0]["clip_id"] != top["clip_id"]


def test_text_search_without_classifier_is_a_clear_json_error(client):
    r = client.get("/api/search", params={"q": "dog barking", "mode": "linguistic"})
    assert r.status_code == 400
    assert "class probabilities" in r.json()["error"]
    # and no text-model work was spent on it
    r = client.get("/api/search", params={"q": "a cat purring"})
    assert r.status_code == 400
    assert client.app.state.nels.text_batcher.texts == 0
    r = client.get("/api/search", params={"q": "   "})
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = client.get("/api/search", params={"q": "x", "mode": "telepathic"})
    assert r.status_code == 422 and "mode" in r.json()["error"]
    r = client.get("/api/search", params={"q": "x", "k": 0})
    assert r.status_code == 422 and r.json()["error"]


def test_modes_and_stats(client):
    m = client.get("/api/modes").json()
    assert "acoustic" in m["available"] and "linguistic" not in m["available"] and "joint" not in m["available"]
    s = client.get("/api/stats").json()
    assert s["clips"] == 5 and s["modes"] == m and s["admin_enabled"] is True


def test_non_audio_upload_is_422(client):
    r = client.post("/api/search", files={"audio": ("notes.txt", b"this is not audio at all" * 50, "text/plain")})
    assert r.status_code == 422
    assert "not an audio file" in r.json()["error"]
    r = client.post("/api/search", files={"audio": ("empty.wav", b"", "audio/wav")})
    assert r.status_code == 422 and r.json()["error"]


def test_oversize_upload_is_413(client):
    big = b"\0" * (2 * 1024 * 1024)  # the test app caps uploads at 1 MB
    r = client.post("/api/search", files={"audio": ("big.wav", big, "audio/wav")})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    just_over = b"\0" * (1024 * 1024 + 10)  # within the multipart envelope allowance, over the file cap
    r = client.post("/api/search", files={"audio": ("big.wav", just_over, "audio/wav")})
    assert r.status_code == 413 and "too large" in r.json()["error"]


# -- clips & media -------------------------------------------------------------------------------------------
def test_clip_page_data(client, library):
    cid = _clip_id(library, "hum")
    c = client.get(f"/api/clips/{cid}").json()
    assert c["id"] == cid and c["segments"] and c["media_url"] == f"/media/{cid}"
    assert "media_path" not in c and "content_hash" not in c
    r = client.get("/api/clips/999999")
    assert r.status_code == 404 and "no clip" in r.json()["error"]
    page = client.get(f"/clip/{cid}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_media_range_requests(client, library):
    cid = _clip_id(library, "chirp")
    full = client.get(f"/media/{cid}")
    assert full.status_code == 200 and full.headers["content-type"].startswith("audio/")
    assert full.headers.get("accept-ranges") == "bytes"
    data = full.content
    on_disk = next((library / "media").rglob("*.wav"))  # any media file is a real wav from the library
    assert data[:4] == b"RIFF" and on_disk.exists()
    r = client.get(f"/media/{cid}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert r.content == data[100:200]
    r = client.get(f"/media/{cid}", headers={"Range": "bytes=-50"})
    assert r.status_code == 206 and r.content == data[-50:]
    r = client.get(f"/media/{cid}", headers={"Range": f"bytes={len(data) - 10}-"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = client.get(f"/media/{cid}", headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416


@pytest.mark.parametrize("path", ["/media/../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd", "/media/abc",
                                  "/media/%2e%2e/nels.db", "/media/-1", "/media/99999", "/media/1%2F..%2F..%2Fnels.db",
                                  "/static/../nels.db", "/api/spectrogram/..%2Fetc.png"])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert b"root:" not in r.content and b"SQLite" not in r.content
    assert "error" in r.json()


def test_spectrogram_png(client, library):
    cid = _clip_id(library, "tone_late")
    r = client.get(f"/api/spectrogram/{cid}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    r2 = client.get(f"/api/spectrogram/{cid}.png", params={"start": 3, "end": 5})
    assert r2.status_code == 200 and r2.content != r.content
    assert list((library / "cache" / "spectrograms").glob(f"{cid}-*.png"))


# -- feedback ------------------------------------------------------------------------------------------------------
def test_feedback_persists_across_restart(library, monkeypatch):
    from nels.web.app import create_app

    cid = _clip_id(library, "bursts")
    with TestClient(create_app(library)) as c:
        seg = c.get(f"/api/clips/{cid}").json()["segments"][0]["segment_id"]
        r = c.post("/api/feedback", json={"query": "noise  bursts", "mode": "acoustic", "clip_id": cid,
                                          "segment_id": seg, "relevant": True})
        assert r.status_code == 200 and r.json()["ok"]
        assert c.post("/api/feedback", json={"query": "x", "clip_id": 424242, "relevant": True}).status_code == 404
        assert c.post("/api/feedback", json={"query": "x", "clip_id": cid, "relevant": "maybe"}).status_code == 422
        before = c.get("/api/stats").json()["feedback"]
    with TestClient(create_app(library)) as c2:  # a new app instance, a new connection
        fb = c2.get("/api/feedback", params={"query": "noise bursts"}).json()["feedback"]
        assert [(f["clip_id"], f["segment_id"], f["relevant"]) for f in fb] == [(cid, seg, True)]
        assert c2.get("/api/stats").json()["feedback"] == before >= 1


# -- admin -------------------------------------------------------------------------------------------------------------
ADMIN_GETS = ["/api/admin/jobs", "/api/admin/models", "/api/admin/iterations"]


def test_answers_carry_security_headers(client):
    for path in ("/api/stats", "/", "/api/nope"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"


def test_admin_needs_a_token(client):
    for path in ADMIN_GETS:
        r = client.get(path)
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"]
        r = client.get(path, headers={"X-Admin-Token": "wrong"})
        assert r.status_code == 403
        r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        r = client.get(path, headers={"X-Admin-Token": TOKEN})
        assert r.status_code == 200
    r = client.post("/api/admin/crawl", json={"queries": ["rain"], "per_query": 1})
    assert r.status_code == 401
    r = client.post("/api/admin/ingest", json={"urls": ["https://example.org/a.wav"]},
                    headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403


def test_admin_disabled_without_env(library, monkeypatch):
    from nels.web.app import create_app

    monkeypatch.delenv("NELS_ADMIN_TOKEN", raising=False)
    with TestClient(create_app(library)) as c:
        r = c.get("/api/admin/jobs", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]
        assert c.get("/api/stats").json()["admin_enabled"] is False


@pytest.mark.parametrize("url", ["http://127.0.0.1/x.wav", "http://127.0.0.1:8000/media/1", "http://localhost/a.wav",
                                 "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.wav",
                                 "http://192.168.1.1/a.wav", "http://[::1]/a.wav", "file:///etc/passwd",
                                 "/etc/passwd"])
def test_admin_ingest_refuses_non_public_urls(client, url):
    def job_ids():
        return [j["id"] for j in client.get("/api/admin/jobs", headers={"X-Admin-Token": TOKEN}).json()["jobs"]]

    before = job_ids()
    r = client.post("/api/admin/ingest", json={"urls": [url]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400, (url, r.text)
    err = r.json()["error"]
    assert "refused" in err or "only http(s)" in err, err
    assert job_ids() == before  # nothing was queued


def test_admin_accepts_with_token(client, monkeypatch):
    import nels.ingest.runner as runner

    calls = []

    def fake_crawl(lib, queries, per_query=10, model=None, options=None, runner=None):
        calls.append((queries, per_query))
        return runner_report()

    def runner_report():
        return runner.IngestReport(added=[], duplicates=0)

    monkeypatch.setattr(runner, "crawl", fake_crawl)  # no network: the job machinery is what's tested
    h = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/admin/crawl", json={"queries": ["rain on a roof"], "per_query": 2}, headers=h)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    import time

    for _ in range(100):
        j = client.get(f"/api/admin/jobs/{job_id}", headers=h).json()
        if j["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert j["status"] == "done", j
    assert j["result"]["added"] == 0 and calls == [(["rain on a roof"], 2)]
    assert client.get("/api/admin/iterations", headers=h).json() == {"iterations": [], "chart": None}
    assert client.get("/api/admin/iterations.png", headers=h).status_code == 404
    m = client.get("/api/admin/models", headers=h).json()
    assert m["library"]["model"] == "baseline"


def test_iterations_chart(own_library, monkeypatch):
    import json as _json
    import sqlite3
    import time

    from nels.web.app import create_app

    library = own_library
    with sqlite3.connect(library / "nels.db") as conn:
        for i in range(3):
            conn.execute("INSERT OR REPLACE INTO iterations(run, iteration, strategy, model, map, per_class, selected,"
                         " created_at) VALUES(?,?,?,?,?,?,?,?)",
                         ("r1", i, "threshold", "m", 0.5 + 0.1 * i, _json.dumps({"dog": 0.4 + 0.1 * i, "rain": 0.6}),
                          None, time.time()))
    monkeypatch.setenv("NELS_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(library)) as c:
        h = {"X-Admin-Token": TOKEN}
        it = c.get("/api/admin/iterations", headers=h).json()
        assert len(it["iterations"]) == 3 and it["chart"] == "/api/admin/iterations.png"
        assert it["iterations"][0]["per_class"]["rain"] == 0.6
        r = c.get("/api/admin/iterations.png", headers=h)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_errors_are_json(client):
    for path in ("/api/nothing-here", "/api/clips/abc", "/api/clips/0"):
        r = client.get(path)
        assert r.status_code in (404, 422) and r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {"error"}
    r = client.post("/api/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    assert client.get("/openapi.json").json()["paths"]["/api/search"]


def test_concurrent_requests(client, library):
    """24 requests from 8 threads at once get the answers each gets alone: the right status and content."""
    from concurrent.futures import ThreadPoolExecutor

    q = wav_bytes(_tone(1000, 2))

    def one(i):
        if i % 3 == 0:
            return client.get("/api/stats")
        if i % 3 == 1:
            return client.get("/api/search", params={"q": "dog"})
        return client.post("/api/search", files={"audio": ("q.wav", q, "audio/wav")})

    def hits(r) -> list[tuple[int, int]]:
        return [(h["clip_id"], h["segment_id"]) for h in r.json()["results"]]

    alone = [one(i) for i in range(3)]  # one of each kind, sequentially: the reference answers
    assert [r.status_code for r in alone] == [200, 400, 200], [r.text for r in alone]
    assert hits(alone[2])[0][0] == _clip_id(library, "tone_late")
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(one, range(24)))
    for i, r in enumerate(answers):
        ref = alone[i % 3]
        assert r.status_code == ref.status_code, (i, r.text)
        if i % 3 == 0:
            assert r.json()["clips"] == ref.json()["clips"] == 5 and r.json()["segments"] == ref.json()["segments"]
        elif i % 3 == 1:
            assert r.json()["error"] == ref.json()["error"] and "class probabilities" in r.json()["error"]
        else:
            assert r.json()["mode"] == ref.json()["mode"] and hits(r) == hits(ref), (i, r.json())


def test_jobs_are_shared_between_server_processes(tmp_path):
    """Two runners on one library (two `nels serve` workers): a job queued through one is listed by both,
    runs once, and a job left 'running' by a dead process is reported as interrupted, not left hanging."""
    import json as _json
    import sqlite3
    import subprocess
    import sys
    import time

    from nels.library import Library
    from nels.web.jobs import JobRunner

    Library(tmp_path / "lib").close()
    ran = []

    def slow(lib, params):
        ran.append(params["n"])
        time.sleep(0.2)
        return {"n": params["n"]}

    a = JobRunner(tmp_path / "lib", {"work": slow})
    b = JobRunner(tmp_path / "lib", {"work": slow})
    j1 = a.submit("work", {"n": 1})
    j2 = b.submit("work", {"n": 2})
    assert j1["status"] in ("queued", "running") and j1["params"] == {"n": 1}
    assert [j["id"] for j in b.list()] == [j2["id"], j1["id"]]
    for _ in range(100):
        if all(a.get(j)["status"] == "done" for j in (j1["id"], j2["id"])):
            break
        time.sleep(0.05)
    assert a.get(j1["id"])["result"] == {"n": 1} and b.get(j2["id"])["result"] == {"n": 2}
    assert sorted(ran) == [1, 2]  # each ran exactly once, one at a time
    done = [b.get(j) for j in (j1["id"], j2["id"])]
    assert done[0]["finished_at"] <= done[1]["started_at"] or done[1]["finished_at"] <= done[0]["started_at"]

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(tmp_path / "lib" / "nels.db") as conn:
        conn.execute("INSERT INTO jobs(kind, params, status, pid, created_at, started_at) VALUES"
                     " ('work', ?, 'running', ?, ?, ?)", (_json.dumps({"n": 3}), dead.pid, time.time(), time.time()))
    stale = a.list()[0]
    assert stale["status"] == "failed" and "interrupted" in stale["error"], stale
    a.stop()
    b.stop()


def test_jobs_queued_before_a_restart_run_when_the_server_starts(tmp_path):
    """A job queued by a server that stopped before running it is run by the next server to start.
    The job ingests a local file (as if queued and accepted before), so it can only succeed: 'done', with
    the clip in the library afterwards."""
    import json as _json
    import sqlite3
    import time

    from fastapi.testclient import TestClient

    from nels.library import Library
    from nels.web.app import create_app

    with Library(tmp_path / "lib") as lib:
        lib.set_meta("model", "baseline")  # the first ingest keeps it (quick, no model files needed)
    wav = write_wav(tmp_path / "hum.wav", synth_sounds()["hum"])
    with sqlite3.connect(tmp_path / "lib" / "nels.db") as conn:
        conn.execute("INSERT INTO jobs(kind, params, status, created_at) VALUES ('ingest', ?, 'queued', ?)",
                     (_json.dumps({"urls": [str(wav)], "max_duration": None}), time.time()))
    with TestClient(create_app(tmp_path / "lib", admin_token="t")) as client:
        for _ in range(600):
            jobs = client.get("/api/admin/jobs", headers={"Authorization": "Bearer t"}).json()["jobs"]
            if jobs[0]["status"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert jobs[0]["status"] == "done", jobs
        assert jobs[0]["result"]["added"] == 1 and not jobs[0]["result"]["failed"], jobs
        stats = client.get("/api/stats").json()
    assert stats["clips"] == 1 and stats["segments"] > 0, stats


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _tcp_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the loopback TCP socket local_port <-> remote_port (IPv4, from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == local_port and int(f[2].split(":")[1], 16) == remote_port:
            return int(f[9])
    return None


def _socket_owners(pids: list[int], inode: int) -> set[int]:
    """Those of `pids` that hold the socket with this inode open."""
    import os

    owners = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    owners.add(pid)
                    break
            except OSError:
                continue
    return owners


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc to see which process answered")
def test_several_server_processes_share_one_library(own_library):
    """`nels serve --workers 2`: two server processes answer, and every answer sees the same jobs (they live
    in the library, not in one process's memory).

    Which worker accepts a connection is the kernel's choice, so the test makes it: after a first answer,
    the worker holding that connection (its accepted socket, found in /proc) is paused with SIGSTOP, and
    the next connection can only be accepted and answered by another worker, which is identified the same
    way. A single-process server would never answer that second request (it times out: the test fails)."""
    import http.client
    import json as _json
    import os
    import signal
    import sqlite3
    import time

    from devserver import Server

    library = own_library
    with sqlite3.connect(library / "nels.db") as conn:
        job_id = conn.execute("INSERT INTO jobs(kind, params, status, created_at) VALUES('crawl', ?, 'failed', ?)",
                              (_json.dumps({"queries": ["rain"], "per_query": 1}), time.time())).lastrowid
    with Server(library, admin_token=TOKEN, workers=2) as srv:

        def ask(conn: http.client.HTTPConnection, path: str) -> dict:
            conn.request("GET", path, headers={"X-Admin-Token": TOKEN})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, body
            return _json.loads(body)

        def served_by(conn: http.client.HTTPConnection) -> int:
            """The server process holding this (kept-alive) connection's accepted socket."""
            inode = _tcp_inode(srv.port, conn.sock.getsockname()[1])
            assert inode is not None
            owners = _socket_owners([srv.proc.pid, *_children(srv.proc.pid)], inode)
            assert len(owners) == 1, owners
            return owners.pop()

        def check(conn: http.client.HTTPConnection) -> int:
            job = ask(conn, f"/api/admin/jobs/{job_id}")
            assert job["id"] == job_id and job["status"] == "failed" and job["params"]["queries"] == ["rain"], job
            assert ask(conn, "/api/stats")["clips"] == 5
            return served_by(conn)

        first = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        p1 = check(first)
        os.kill(p1, signal.SIGSTOP)
        try:
            second = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
            p2 = check(second)
        finally:
            os.kill(p1, signal.SIGCONT)
        assert p1 != p2 and {p1, p2} <= set(_children(srv.proc.pid))
        # both go on answering, each on its own connection
        assert check(first) == p1 and check(second) == p2
        first.close()
        second.close()


DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "nels" / "data" / "models" / "esc50-cnn" / "model.json"


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the default CNN model is not built")
def test_cached_text_answers_follow_the_library(tmp_path):
    """Text answers are cached, but a change committed by anyone else (here a removal from another
    connection, as `nels remove` would do) is seen by the very next search."""
    from nels.library import Library
    from nels.web.app import create_app

    lib_dir = build_library(tmp_path, model="default")
    with TestClient(create_app(lib_dir, warm=True)) as c:
        first = c.get("/api/search", params={"q": "a loud whistle", "k": 5}).json()
        again = c.get("/api/search", params={"q": "a loud whistle", "k": 5}).json()
        assert first == again and first["results"]
        gone = first["results"][0]["clip_id"]
        other = Library(lib_dir, create=False)
        assert other.remove_clips([gone]) == 1
        other.close()
        after = c.get("/api/search", params={"q": "a loud whistle", "k": 5}).json()
        assert gone not in [r["clip_id"] for r in after["results"]]
