"""Load with a hostile mix: text searchers, audio uploaders and garbage senders at once, against `nels serve`.

    python bench/bench_hostile.py --library DIR [--seconds 60] [--text 40] [--uploads 10] [--garbage 5]
                                  [--workers 2] [--warmup 5] [--json] [--out FILE]

Starts `nels serve --workers N` on 127.0.0.1 (loopback only, a free port; admin disabled) over the library,
then runs closed-loop clients (Python threads, keep-alive HTTP/1.1) for `--seconds`:

* text: GET /api/search with a query drawn from a list (so some answers are cached, some are not);
* uploads: POST /api/search with a real WAV (a random 1-4 s crop of a synthesised sound);
* garbage: a rotating mix of what an attacker sends: NaN / inf / 1e30 float WAVs, random bytes, HTML,
  truncated headers, an empty file, an upload over the size cap, ids of 2^70, start=inf / 1e308, a span past
  the clip, malformed JSON, a feedback flood (429s), a foreign Host header, path traversal, unknown paths.

Reports per kind: requests, statuses, 5xx count, connection errors, p50/p99 latency; and the server's RSS
(all its processes) after the warm-up and at the end (growth in %), sampled every second. Pass criteria of
issue 17: 0 answers >= 500 and RSS growth <= 10 %. Without --library, a small synthesised library (the CNN,
so text search works) is built in a temporary folder.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the test suite's server helpers and hostile inputs

from bench_web import TEXT_QUERIES, multipart, percentile  # noqa: E402
from devserver import Server, build_library, synth_sounds, wav_bytes  # noqa: E402
from hostile import garbage_payloads  # noqa: E402

MORE_QUERIES = TEXT_QUERIES + ["glass breaking", "a dog and a cat", "wind", "engine idling", "clock ticking",
                               "water dripping", "siren", "applause", "chainsaw", "rooster", "snoring", "train"]


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (kB)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            pass
    return total


def garbage_requests(clip_ids: list[int], limit_bytes: int) -> list:
    """(method, path, body, headers, label) of each garbage request."""
    out = []
    for name, data in garbage_payloads(seed=1):
        body, ctype = multipart(data, name, {"k": 5})
        out.append(("POST", "/api/search", body, {"Content-Type": ctype}, f"upload {name}"))
    # a body declared over the cap: refused (413) from the headers, before a byte of it is read
    out.append(("POST", "/api/search", b"", {"Content-Type": "multipart/form-data; boundary=x",
                                            "Content-Length": str(limit_bytes + 1024 * 1024)}, "declared over the cap"))
    cid = clip_ids[0] if clip_ids else 1
    for path in [f"/media/{2 ** 70}", f"/api/clips/{2 ** 70}", f"/api/spectrogram/{2 ** 70}.png",
                 f"/api/spectrogram/{cid}.png?start=inf&end=1", f"/api/spectrogram/{cid}.png?start=1e308&end=2e308",
                 f"/api/spectrogram/{cid}.png?start=100000&end=100001", "/api/search?q=" + "x" * 5000,
                 "/api/search?q=rain&k=100000", "/api/search?q=rain&min_duration=nan", "/media/..%2F..%2Fnels.db",
                 "/static/../nels.db", "/api/nope", "/api/admin/jobs", "/api/admin/jobs/1"]:
        out.append(("GET", path, None, {}, path.split("?")[0]))
    out.append(("POST", "/api/feedback", b"{not json", {"Content-Type": "application/json"}, "bad json"))
    out.append(("POST", "/api/feedback", json.dumps({"query": "x", "clip_id": 2 ** 70, "relevant": True}).encode(),
                {"Content-Type": "application/json"}, "feedback id 2^70"))
    out.append(("POST", "/api/feedback", json.dumps({"query": "flood", "clip_id": cid, "relevant": True}).encode(),
                {"Content-Type": "application/json"}, "feedback flood"))
    out.append(("GET", "/api/stats", None, {"Host": "rebound.attacker.example"}, "foreign Host"))
    body, ctype = multipart(wav_bytes(synth_sounds()["chirp"][:16000]), "q.wav", {"start": "inf"})
    out.append(("POST", "/api/search", body, {"Content-Type": ctype}, "start=inf"))
    return out


def run(port: int, seconds: float, n_text: int, n_upload: int, n_garbage: int, clip_ids: list[int],
        limit_bytes: int) -> dict:
    deadline = time.perf_counter() + seconds
    results = {k: {"lat": [], "status": Counter(), "errors": Counter(), "fivexx": Counter()}
               for k in ("text", "upload", "garbage")}
    lock = threading.Lock()
    sounds = list(synth_sounds().values())
    garbage = garbage_requests(clip_ids, limit_bytes)
    counter = itertools.count()

    def request(kind: str, rng: random.Random):
        if kind == "text":
            q = rng.choice(MORE_QUERIES)
            if rng.random() < 0.3:  # a third are new phrasings: cache misses
                q = f"{q} {rng.choice(MORE_QUERIES)}"
            return "GET", "/api/search?" + urlencode({"q": q, "k": 10}), None, {}, "text"
        if kind == "upload":
            x = rng.choice(sounds)
            n = rng.randint(16000, min(4 * 16000, x.size))
            a = rng.randint(0, x.size - n)
            body, ctype = multipart(wav_bytes(x[a:a + n]), "query.wav", {"k": 10})
            return "POST", "/api/search", body, {"Content-Type": ctype}, "upload"
        return garbage[next(counter) % len(garbage)]

    def client(kind: str, i: int):
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = {"lat": [], "status": Counter(), "errors": Counter(), "fivexx": Counter()}
        while time.perf_counter() < deadline:
            method, path, body, headers, label = request(kind, rng)
            t0 = time.perf_counter()
            try:
                if "Content-Length" in headers:  # headers only: the server answers from the declared length
                    conn.putrequest(method, path)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders()
                else:
                    conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                mine["lat"].append(time.perf_counter() - t0)
                mine["status"][resp.status] += 1
                if resp.status >= 500:
                    mine["fivexx"][f"{resp.status} {label}"] += 1
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            except (OSError, http.client.HTTPException) as exc:
                mine["errors"][f"{label}: {exc.__class__.__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()
        with lock:
            r = results[kind]
            r["lat"] += mine["lat"]
            for k in ("status", "errors", "fivexx"):
                r[k].update(mine[k])

    threads = [threading.Thread(target=client, args=(kind, i), daemon=True)
               for kind, n in (("text", n_text), ("upload", n_upload), ("garbage", n_garbage)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {}
    for kind, r in results.items():
        ms = [x * 1000 for x in r["lat"]]
        out[kind] = {"requests": len(ms) + sum(r["errors"].values()), "rps": round(len(ms) / wall, 1),
                     "p50_ms": round(percentile(ms, 50), 1) if ms else None,
                     "p99_ms": round(percentile(ms, 99), 1) if ms else None,
                     "statuses": {str(k): v for k, v in sorted(r["status"].items())},
                     "5xx": sum(r["fivexx"].values()), "5xx_samples": dict(r["fivexx"].most_common(5)),
                     "connection_errors": sum(r["errors"].values()), "error_samples": dict(r["errors"].most_common(5))}
    out["wall_s"] = round(wall, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", default=None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--text", type=int, default=40)
    ap.add_argument("--uploads", type=int, default=10)
    ap.add_argument("--garbage", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of the same load before RSS is first read")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    tmp = None
    lib = a.library
    if lib is None:
        tmp = tempfile.mkdtemp(prefix="nels-hostile-")
        lib = str(build_library(Path(tmp), model="default"))
    import sqlite3

    with sqlite3.connect(Path(lib) / "nels.db") as conn:
        clip_ids = [r[0] for r in conn.execute("SELECT id FROM clips ORDER BY id LIMIT 50")]
        segments = conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
    limit = int(float(os.environ.get("NELS_MAX_UPLOAD_MB", "20")) * 1024 * 1024)
    srv = Server(Path(lib), workers=a.workers).start(timeout=600)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_kb(srv.proc.pid)))
            stop.wait(1.0)

    try:
        rss_idle = rss_kb(srv.proc.pid)
        if a.warmup > 0:
            run(srv.port, a.warmup, a.text, a.uploads, a.garbage, clip_ids, limit)
        rss_start = rss_kb(srv.proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report = run(srv.port, a.seconds, a.text, a.uploads, a.garbage, clip_ids, limit)
        stop.set()
        sampler.join()
        rss_end = rss_kb(srv.proc.pid)
        alive = srv.proc.poll() is None
    finally:
        stop.set()
        srv.stop()
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if l.startswith("Model name")), "?")
    report.update(library=lib, segments=segments, workers=a.workers, seconds=a.seconds, warmup_s=a.warmup,
                  clients={"text": a.text, "upload": a.uploads, "garbage": a.garbage}, cpu=cpu, cores=os.cpu_count(),
                  rss_mb={"idle": round(rss_idle / 1024, 1), "after_warmup": round(rss_start / 1024, 1),
                          "end": round(rss_end / 1024, 1), "max": round(max(s for _, s in samples) / 1024, 1)},
                  rss_growth_pct=round(100 * (rss_end - rss_start) / max(rss_start, 1), 1), server_alive=alive,
                  date=time.strftime("%Y-%m-%d"))
    report["pass"] = (all(report[k]["5xx"] == 0 for k in ("text", "upload", "garbage")) and alive
                      and report["rss_growth_pct"] <= 10.0)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{segments} segments, {a.workers} workers, {a.seconds:.0f} s, CPU {cpu} x{os.cpu_count()}")
        for k in ("text", "upload", "garbage"):
            r = report[k]
            print(f"  {k:8s} {r['requests']:6d} req  {r['rps']:6.1f}/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
                  f"  5xx {r['5xx']}  conn errors {r['connection_errors']}  {r['statuses']}")
        print(f"  RSS {report['rss_mb']} MB, growth {report['rss_growth_pct']} %; pass: {report['pass']}")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
