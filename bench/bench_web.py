"""Load test of the website's search API, plus "first results page visible after submit" in a real browser.

    python bench/bench_web.py --library DIR [--seconds 60] [--clients 50] [--kind auto|text|audio]
                              [--query TEXT ...] [--audio FILE] [--browser-runs 5] [--no-browser] [--json]

Starts `nels serve --workers N` on 127.0.0.1 (loopback only) on a free port, then runs `--clients`
concurrent keep-alive HTTP/1.1 clients for `--seconds` seconds: text searches (GET /api/search) or audio
searches (POST /api/search, multipart upload). Reports latency p50/p95/p99, throughput and errors
(any non-200 answer or a failed connection). The load generator is `wrk` (C, one thread: it takes
little of the CPU the server needs on a small machine) for text searches when it is installed
(`apt-get install wrk`), else Python threads (`--generator python`, which cost the server about half
of a 2-core machine). Then Playwright + chromium measures, in the page, the time
from the submit event to the first painted frame with results, `--browser-runs` times.
Without --library, a small synthesised library is built in a temporary folder.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the test suite's server helpers

from nels.web.server import default_workers  # noqa: E402
from devserver import CHROMIUM, CHROMIUM_ARGS, Server, build_library, tone, wav_bytes  # noqa: E402

TEXT_QUERIES = ["dog barking", "rain", "church bells", "a baby crying", "footsteps", "birds singing",
                "car horn", "thunderstorm", "keyboard typing", "door knock", "crackling fire", "sea waves"]


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[i]


def multipart(audio: bytes, filename: str, fields: dict) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + audio + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


def load_test(port: int, seconds: float, clients: int, kind: str, queries: list[str], audio: bytes | None,
              k: int = 10) -> dict:
    deadline = time.perf_counter() + seconds
    lat: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    counter = itertools.count()
    body, ctype = multipart(audio, "query.wav", {"k": k}) if audio is not None else (b"", "")

    def client(i: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        my_lat, my_status, my_err = [], Counter(), []
        while time.perf_counter() < deadline:
            n = next(counter)
            t0 = time.perf_counter()
            try:
                if kind == "text":
                    conn.request("GET", "/api/search?" + urlencode({"q": queries[n % len(queries)], "k": k}))
                else:
                    conn.request("POST", "/api/search", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
                my_status[resp.status] += 1
                if resp.status != 200:
                    my_err.append(f"HTTP {resp.status}")
                my_lat.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException) as exc:
                my_status["conn-error"] += 1
                my_err.append(f"{exc.__class__.__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()
        with lock:
            lat.extend(my_lat)
            statuses.update(my_status)
            errors.extend(my_err)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    ms = [x * 1000 for x in lat]
    return {"kind": kind, "clients": clients, "seconds": round(wall, 1), "requests": len(lat) + statuses["conn-error"],
            "throughput_rps": round(len(lat) / wall, 1) if wall else None,
            "p50_ms": _r(percentile(ms, 50)), "p95_ms": _r(percentile(ms, 95)), "p99_ms": _r(percentile(ms, 99)),
            "mean_ms": _r(statistics.fmean(ms)) if ms else None, "max_ms": _r(max(ms)) if ms else None,
            "errors": sum(v for s, v in statuses.items() if s != 200), "statuses": {str(s): v for s, v in statuses.items()},
            "error_samples": sorted(set(errors))[:5]}


WRK_SCRIPT = """
local paths = {%s}
math.randomseed(%d)
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50\\": %%d, \\"p95\\": %%d, " ..
    "\\"p99\\": %%d, \\"max\\": %%d, \\"mean\\": %%.1f, \\"status\\": %%d, \\"connect\\": %%d, \\"read\\": %%d, " ..
    "\\"write\\": %%d, \\"timeout\\": %%d}\\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read,
    e.write, e.timeout))
end
"""


def load_test_wrk(port: int, seconds: float, clients: int, queries: list[str], k: int = 10, threads: int = 1,
                  seed: int = 0) -> dict:
    """Text-search load with wrk: `clients` connections, each sending its next request when the last one
    is answered (closed loop, like the Python clients), a query drawn at random per request."""
    import subprocess

    paths = ", ".join(json.dumps("/api/search?" + urlencode({"q": q, "k": k})) for q in queries)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % (paths, seed))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{int(round(seconds))}s", "--timeout", "30s",
                          "-s", f.name, f"http://127.0.0.1:{port}"], capture_output=True, text=True)
    Path(f.name).unlink()
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout[-500:]} {out.stderr[-500:]}")
    w = json.loads(line[8:])
    wall = w["duration_us"] / 1e6
    errors = w["status"] + w["connect"] + w["read"] + w["write"] + w["timeout"]
    return {"kind": "text", "generator": "wrk", "clients": clients, "seconds": round(wall, 1),
            "requests": w["requests"], "throughput_rps": round(w["requests"] / wall, 1),
            "p50_ms": _r(w["p50"] / 1000), "p95_ms": _r(w["p95"] / 1000), "p99_ms": _r(w["p99"] / 1000),
            "mean_ms": _r(w["mean"] / 1000), "max_ms": _r(w["max"] / 1000), "errors": errors,
            "statuses": {"non-2xx": w["status"], "connect": w["connect"], "read": w["read"], "write": w["write"],
                         "timeout": w["timeout"]}, "error_samples": []}


def _r(x):
    return None if x is None else round(x, 1)


INSTRUMENT = """() => {
  window.__t0 = null; window.__t1 = null;
  const mark = () => { window.__t0 = performance.now(); window.__t1 = null; };
  document.addEventListener('submit', mark, true);
  document.addEventListener('change', mark, true);
  const list = document.querySelector('#results'), status = document.querySelector('#status');
  const obs = new MutationObserver(() => {
    if (window.__t0 !== null && window.__t1 === null && (list.children.length || status.classList.contains('error'))) {
      requestAnimationFrame(() => requestAnimationFrame(() => { if (window.__t1 === null) window.__t1 = performance.now(); }));
    }
  });
  obs.observe(list, {childList: true});
  obs.observe(status, {attributes: true, childList: true});
}"""


def browser_first_results(url: str, kind: str, queries: list[str], audio_file: Path | None, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(120000)
        page.goto(url + "/")
        page.evaluate(INSTRUMENT)
        errors = 0
        for i in range(runs):
            page.evaluate("() => { document.querySelector('#results').replaceChildren(); window.__t0 = null; window.__t1 = null; }")
            if kind == "text":
                page.fill("#q", queries[i % len(queries)])
                page.evaluate("() => document.querySelector('#search-form').requestSubmit()")
            else:
                page.set_input_files("#audio-file", str(audio_file))
            page.wait_for_function("() => window.__t1 !== null")
            times.append(page.evaluate("() => window.__t1 - window.__t0"))
            errors += page.evaluate("() => document.querySelector('#status').classList.contains('error') ? 1 : 0")
        browser.close()
    return {"runs": runs, "first_ms": _r(times[0]), "median_ms": _r(statistics.median(times)),
            "max_ms": _r(max(times)), "all_ms": [_r(t) for t in times], "error_pages": errors}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=None, help="library folder (default: build a synthetic one)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--kind", default="auto", choices=["auto", "text", "audio"],
                   help="auto: text when the library has a classifier, else audio")
    p.add_argument("--query", action="append", default=None, help="text query (repeatable)")
    p.add_argument("--audio", default=None, help="audio query file (default: a 2 s 1 kHz tone)")
    p.add_argument("--queries-file", action="append", default=[],
                   help="a JSON list of text queries, a paraphrase file ({'queries': [{'text': ...}]}) or a"
                        " phrasings file ({'classes': {label: [text, ...]}}, e.g. nels/data/joint_phrases.json"
                        " for a long tail of distinct queries); repeatable")
    p.add_argument("--class-names", action="store_true", help="add the library's class names to the queries")
    p.add_argument("--generator", default="auto", choices=["auto", "wrk", "python"],
                   help="load generator for text searches (auto: wrk when installed)")
    p.add_argument("--workers", type=int, default=None, help="nels serve --workers (default: its own default)")
    p.add_argument("--warmup", type=float, default=0.0, metavar="SECONDS",
                   help="run the same load this long first and report it apart ('cold'): the measured run then "
                        "sees a server whose answer caches hold the query mix (steady state)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--browser-runs", type=int, default=5)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="nels-bench-")
    library = Path(args.library) if args.library else build_library(Path(tmp.name))
    queries = list(args.query or [])
    for path in args.queries_file:
        qf = json.loads(Path(path).read_text())
        if isinstance(qf, dict) and isinstance(qf.get("classes"), dict):
            qf = [t for texts in qf["classes"].values() for t in texts]
        qf = qf["queries"] if isinstance(qf, dict) else qf
        queries += [q["text"] if isinstance(q, dict) else str(q) for q in qf]
    if args.class_names:
        import sqlite3

        with sqlite3.connect(library / "nels.db") as conn:
            row = conn.execute("SELECT labels FROM models WHERE labels IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        queries += [l.replace("_", " ") for l in json.loads(row[0] or "[]")] if row else []
    queries = queries or TEXT_QUERIES
    audio_file = Path(args.audio) if args.audio else Path(tmp.name) / "query.wav"
    if not args.audio:
        audio_file.write_bytes(wav_bytes(tone(1000, 2)))
    report: dict = {"library": str(library)}
    with Server(library, workers=args.workers) as srv:
        with urllib.request.urlopen(f"{srv.url}/api/stats") as r:
            stats = json.load(r)
        kind = args.kind if args.kind != "auto" else ("text" if stats["modes"]["text"] else "audio")
        report.update(clips=stats["clips"], segments=stats["segments"], kind=kind)
        audio = audio_file.read_bytes() if kind == "audio" else None
        load_test(srv.port, 0.5, 1, kind, queries, audio, args.k)  # warm-up: models and indexes load once
        if not args.json:
            print(f"load test: {args.clients} clients x {args.seconds:.0f} s, {kind} search, "
                  f"{stats['segments']} segments ...", file=sys.stderr)
        gen = args.generator
        if gen == "auto":
            gen = "wrk" if (kind == "text" and shutil.which("wrk")) else "python"
        def one_run(seconds):
            if gen == "wrk":
                return load_test_wrk(srv.port, seconds, args.clients, queries, args.k)
            return load_test(srv.port, seconds, args.clients, kind, queries, audio, args.k)

        if args.warmup > 0:
            report["cold"] = one_run(args.warmup)
        report["load"] = one_run(args.seconds)
        report.update(generator=gen, distinct_queries=len(set(queries)), workers=srv.workers or default_workers())
        if not args.no_browser:
            if Path(CHROMIUM).exists():
                report["browser"] = browser_first_results(srv.url, kind, queries, audio_file, args.browser_runs)
            else:
                report["browser"] = {"skipped": f"chromium not found at {CHROMIUM}"}
    tmp.cleanup()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        L = report["load"]
        if "cold" in report:
            C = report["cold"]
            print(f"cold:    first {C['seconds']} s from start: {C['requests']} requests, {C['throughput_rps']} req/s, "
                  f"p50 {C['p50_ms']} ms, p95 {C['p95_ms']} ms, p99 {C['p99_ms']} ms, errors {C['errors']}")
        print(f"library: {report['library']} ({report['clips']} clips, {report['segments']} segments), {kind} search")
        print(f"load:    {report['generator']}, {report['workers']} server worker(s), "
              f"{report['distinct_queries']} distinct queries")
        print(f"load:    {L['clients']} clients, {L['seconds']} s, {L['requests']} requests, {L['throughput_rps']} req/s")
        print(f"latency: p50 {L['p50_ms']} ms, p95 {L['p95_ms']} ms, p99 {L['p99_ms']} ms (max {L['max_ms']} ms)")
        print(f"errors:  {L['errors']} {L['statuses']} {L['error_samples'] or ''}")
        if "browser" in report:
            B = report["browser"]
            if "skipped" in B:
                print(f"browser: skipped ({B['skipped']})")
            else:
                print(f"browser: first results visible after submit: median {B['median_ms']} ms over {B['runs']} runs"
                      f" (first {B['first_ms']} ms, max {B['max_ms']} ms)")
    return 0 if report["load"]["errors"] == 0 and report.get("cold", {}).get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
