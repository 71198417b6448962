"""The clip page of a long recording: time to first paint in a real browser, and the server-side cost of what
the page asks for (the clip's JSON, the overview, a detail range), cold (no cache) and warm.

    python bench/bench_clip_page.py [--hours 1] [--work DIR] [--runs 5] [--json]

Synthesises a recording of `--hours` (blocks of 10-120 s of tones, noise, clicks, sweeps and hum), ingests it
with the default model into a library under `--work` (kept: a second run re-uses it), starts `nels serve` on
127.0.0.1 and measures:

* first paint: Playwright + chromium opens /clip/ID; the time from navigation start to the first frame painted
  after clip.js has drawn the page (title, overview frame, timeline, controls, event list: `document.body.dataset
  .clip == "ready"`), then until the detail picture and the overview picture have loaded; the first run with a
  new server and an empty picture cache (cold), the others warm (median); a fresh browser context each run;
  the browser has shown one page (a data: URL) before, unless `--cold-browser`;
  with where the time went (Resource Timing: the page, its scripts, the clip's JSON) and the server process's
  CPU time until the first paint;
* `--busy N`: N processes spin at this script's own priority while the browser loads the page (run it under
  `nice -n 10`: they then take only CPU nobody else wants), a reproducible stand-in for a loaded machine;
* the server side, in-process (FastAPI TestClient): GET /api/clips/ID?segments=false, a 60 s detail view and the
  whole-clip overview (GET /api/clips/ID/view.png), cold (new app, memo and picture cache emptied) and warm,
  wall and CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

SR = 16000


def synth_long(seconds: float, seed: int = 0) -> np.ndarray:
    """Blocks of 10-120 s of six kinds of sound (each with its own pitch or rate), 1 s of silence between some."""
    from conftest import synth

    rng = np.random.default_rng(seed)
    kinds = ["tone", "high", "noise", "clicks", "chirp", "hum"]
    parts, total = [], 0.0
    while total < seconds:
        d = float(min(rng.uniform(10, 120), seconds - total))
        x = synth(kinds[int(rng.integers(len(kinds)))], max(d, 0.5), seed=int(rng.integers(1 << 30)))
        parts.append(x)
        total += d
        if rng.random() < 0.3 and total < seconds - 1:
            parts.append(np.zeros(SR, np.float32))
            total += 1.0
    return np.concatenate(parts)[: int(seconds * SR)]


def write_flac(path: Path, x: np.ndarray) -> Path:
    import av

    with av.open(str(path), "w", format="flac") as out:
        st = out.add_stream("flac", rate=SR)
        st.layout = "mono"
        for i in range(0, x.size, SR * 10):
            fr = av.AudioFrame.from_ndarray((np.clip(x[i:i + SR * 10], -1, 1) * 32767).astype("<i2")[None],
                                            format="s16", layout="mono")
            fr.sample_rate = SR
            for pk in st.encode(fr):
                out.mux(pk)
        for pk in st.encode(None):
            out.mux(pk)
    return path


def build(work: Path, hours: float) -> tuple[Path, int]:
    """The library (built once, then re-used) and the long clip's id."""
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    lib_dir = work / f"lib-{hours:g}h"
    marker = lib_dir / "bench-clip.json"
    if marker.exists():
        return lib_dir, json.loads(marker.read_text())["clip_id"]
    work.mkdir(parents=True, exist_ok=True)
    f = write_flac(work / f"long-{hours:g}h.flac", synth_long(hours * 3600))
    t = time.time()
    with Library(lib_dir) as lib:
        rep = ingest(lib, [str(f)], model="default", options=IngestOptions(progress=sys.stderr.isatty()))
    if not rep.added:
        sys.exit(f"ingest failed: {rep.to_dict()}")
    marker.write_text(json.dumps({"clip_id": rep.added[0], "ingest_s": round(time.time() - t, 1)}))
    return lib_dir, rep.added[0]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round((time.perf_counter() - w) * 1000, 1), round((time.process_time() - c) * 1000, 1)


def server_side(lib_dir: Path, clip_id: int) -> dict:
    from fastapi.testclient import TestClient

    from nels.web.app import create_app

    out = {}
    for phase in ("cold", "warm"):
        if phase == "cold":  # a new server process's view: no clip memo, no pictures on disk
            shutil.rmtree(lib_dir / "cache", ignore_errors=True)
            from nels.web.routes import clips as clips_route

            clips_route._CLIPS.clear()
        with TestClient(create_app(lib_dir)) as c:
            r, w, cpu = timed(lambda: c.get(f"/api/clips/{clip_id}", params={"segments": "false"}))
            assert r.status_code == 200, r.text[:300]
            clip = r.json()
            row = {"clip_json": {"wall_ms": w, "cpu_ms": cpu, "bytes": len(r.content)}}
            dur = clip["duration"]
            for name, params in (("detail_60s_png", {"start": 0, "end": 60, "width": 1200, "height": 160}),
                                 ("overview_png", {"start": 0, "end": dur, "width": 1200, "height": 80})):
                r, w, cpu = timed(lambda: c.get(clip["view_url"], params=params))
                assert r.status_code == 200, r.text[:300]
                row[name] = {"wall_ms": w, "cpu_ms": cpu, "bytes": len(r.content)}
            out[phase] = row
    out["events"] = len(clip["events"])
    out["event_kinds"] = len(clip["event_groups"])
    out["segments"] = clip["n_segments"]
    return out


PAINTED = """() => new Promise((resolve) => {
  const done = () => requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now())));
  const tick = () => { if (document.body && document.body.dataset.clip === "ready") done(); else setTimeout(tick, 5); };
  tick();
})"""
# ms since navigation start until an image has loaded (polled every 20 ms)
IMAGE = """(sel) => new Promise((resolve) => {
  const tick = () => { const im = document.querySelector(sel);
    if (im && im.complete && im.naturalWidth > 0 && im.getAttribute("src")) resolve(performance.now()); else setTimeout(tick, 20); };
  tick();
})"""


# where the first paint's time went: ms from navigation start to the end of the page, of the scripts, and the
# clip's JSON (its request start and end)
TIMINGS = """() => {
  const nav = performance.getEntriesByType("navigation")[0], out = {html_end: nav.responseEnd,
    dom_content_loaded: nav.domContentLoadedEventEnd};
  for (const e of performance.getEntriesByType("resource")) {
    const u = new URL(e.name);
    if (u.pathname.startsWith("/static/")) out.scripts_end = Math.max(out.scripts_end || 0, e.responseEnd);
    else if (u.pathname.startsWith("/api/clips/") && !u.pathname.endsWith(".png") && out.clip_json_start === undefined) {
      out.clip_json_start = e.requestStart; out.clip_json_end = e.responseEnd; }
  }
  for (const k in out) out[k] = Math.round(out[k]);
  return out;
}"""


def process_cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def spin() -> None:
    while True:
        pass


def browser(lib_dir: Path, clip_id: int, runs: int, busy: int = 0, warm_browser: bool = True) -> dict:
    from devserver import CHROMIUM, CHROMIUM_ARGS, Server
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        return {"skipped": f"chromium not found at {CHROMIUM}"}
    shutil.rmtree(lib_dir / "cache", ignore_errors=True)
    from nels.web.routes import clips as clips_route

    clips_route._CLIPS.clear()
    rows, timings, server_cpu = [], [], []
    srv = Server(lib_dir).start(timeout=600)  # a loaded machine may take minutes to start a server
    import multiprocessing

    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
    for sp in spinners:
        sp.start()
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if warm_browser:  # a browser that has shown a page before (a user's), not one starting with this page
                ctx = b.new_context()
                ctx.new_page().goto("data:text/html,<p>warm</p><script>document.title = 'warm'</script>")
                ctx.close()
            for i in range(runs):
                ctx = b.new_context(viewport={"width": 1200, "height": 900})  # a fresh browser cache every run
                page = ctx.new_page()
                page.set_default_timeout(120000)
                cpu0 = process_cpu_ms(srv.proc.pid)
                page.goto(f"{srv.url}/clip/{clip_id}", wait_until="commit")
                # ms since this navigation started: the page painted (title, timeline, events), then its pictures
                painted = page.evaluate(PAINTED)
                server_cpu.append(round(process_cpu_ms(srv.proc.pid) - cpu0))
                timings.append(page.evaluate(TIMINGS))
                rows.append((painted, page.evaluate(IMAGE, "#detail-img"), page.evaluate(IMAGE, "#ov-img")))
                ctx.close()
            b.close()
    finally:
        for sp in spinners:
            sp.terminate()
            sp.join()
        srv.stop()
    out = {"runs": runs, "busy": busy, "browser_warmed": warm_browser, "load_average": [round(x, 1) for x in os.getloadavg()],
           "cold_timings_ms": timings[0], "warm_timings_ms": timings[-1],
           "server_cpu_to_first_paint_ms": {"cold": server_cpu[0], "warm_median": statistics.median(server_cpu[1:] or server_cpu)}}
    for j, name in enumerate(("first_paint", "detail_visible", "overview_visible")):
        ts = [r[j] for r in rows]
        out[name] = {"cold_ms": round(ts[0]), "warm_median_ms": round(statistics.median(ts[1:] or ts)),
                     "all_ms": [round(t) for t in ts]}
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "nels-bench-clip"))
    p.add_argument("--runs", type=int, default=5, help="browser page loads (the first with a cold server cache)")
    p.add_argument("--busy", type=int, default=0, help="processes spinning (at this script's priority) while the"
                                                          " browser loads the page: a loaded machine")
    p.add_argument("--cold-browser", action="store_true",
                   help="the first load is also the browser's first page (by default it has shown one page first:"
                        " the server is cold, not the user's browser)")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    lib_dir, clip_id = build(Path(a.work), a.hours)
    if a.build_only:
        print(f"library {lib_dir}, clip {clip_id}")
        return 0
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
              "cores": os.cpu_count(), "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
              "hours": a.hours, "clip_id": clip_id, "server": server_side(lib_dir, clip_id)}
    if not a.no_browser:
        report["browser"] = browser(lib_dir, clip_id, a.runs, a.busy, warm_browser=not a.cold_browser)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
