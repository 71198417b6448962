"""`nels run` unattended on the loopback video site for a given wall time, with `nels serve` beside it on the same
library answering text searches back to back the whole time; in the middle the loop is killed with kill -9 once
and stopped with SIGTERM once (restarted each time), and SIGTERMed again at the end.

The site (tests/videosite.py) serves synthesised tone classes, two pairs of them only ~6 % apart in pitch and
noisy (the shipped CNN confuses some of their clips, so a re-trained head is not always better and the gate
has real decisions), titles right 70 % of the time, plus noise distractors; the seed and the held-out set are
folders of the same classes.

Checks and records:
  - per cycle: each step's status and wall seconds, crawl/ingest counts, the candidate's held-out mAP, the gate's
    decision with its reason, the re-index, and the searches answered/failed while the cycle ran;
  - searches answered/failed in all, while a re-index step ran, and in flight within +-5 s of each swap;
  - kill -9 (in the middle of a step): the lock is released, the restart resumes the step that was running
    (its log line says resumed) and redoes no step that was done; nothing lost (clips and items before the kill
    are still there) or duplicated (one clip per content hash, one done line per cycle and step);
  - SIGTERM (twice: in the middle, and to end the run): the running step finishes, the exit status is 0, the
    log ends with stop/signal, no step is left running, the lock is released;
  - at the end: PRAGMA integrity_check, clips vs distinct content hashes, segments vs vectors per space, the
    vector index on disk and after a sync vs the catalogue, the served classifier (seen by `nels serve`
    without a restart) vs the library's.
Prints a summary and writes the whole record to bench/results/bench-run-DATE.json.

    nice -n 10 python3 bench/bench_run.py --minutes 35
    nice -n 10 python3 bench/bench_run.py --cycles 3          # the old mode: a fixed number of cycles, no kills
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NELS_MODEL", "default")

import numpy as np  # noqa: E402

from devserver import Server  # noqa: E402
from videosite import VideoSite, synthetic_videos, tone_folders  # noqa: E402

# two confusable pairs (200/212 Hz, 800/845 Hz) and two easy classes
CLASSES = {"low hum": 200.0, "drone": 212.0, "beep": 800.0, "ping": 845.0, "whistle": 2500.0, "buzz": 120.0}
SWAP_WINDOW = 5.0  # seconds either side of a re-index step's end counted as "during the swap"


# -- the library, read from outside ----------------------------------------------------------------------------
def steps_now(lib: Path) -> list[dict]:
    from nels.store.catalogue import Catalogue

    cat = Catalogue(lib / "nels.db", create=False)
    try:
        return cat.run_steps(400)
    finally:
        cat.close()


def running_step(lib: Path) -> dict | None:
    return next((s for s in steps_now(lib) if s["status"] == "running"), None)


def read_log(lib: Path) -> list[dict]:
    f = lib / "run.log"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


def snapshot(lib: Path) -> dict:
    """What must survive a kill: clip hashes and item URIs (read-only SQLite)."""
    with sqlite3.connect(f"file:{lib / 'nels.db'}?mode=ro", uri=True) as c:
        return {"hashes": {r[0] for r in c.execute("SELECT content_hash FROM clips")},
                "items": {r[0] for r in c.execute("SELECT uri FROM items")}}


def integrity(lib: Path) -> dict:
    """Catalogue vs vector indexes, SQLite's own check, duplicates, leftovers."""
    from nels.store.library import Library
    from nels.store.vectors import open_store

    out = {}
    with sqlite3.connect(f"file:{lib / 'nels.db'}?mode=ro", uri=True) as c:
        one = lambda q: c.execute(q).fetchone()[0]  # noqa: E731
        out["integrity_check"] = [r[0] for r in c.execute("PRAGMA integrity_check")]
        out["clips"] = one("SELECT COUNT(*) FROM clips")
        out["distinct_content_hashes"] = one("SELECT COUNT(DISTINCT content_hash) FROM clips")
        out["segments"] = one("SELECT COUNT(*) FROM segments")
        out["items"] = {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM items GROUP BY status")}
        out["items_claimed"] = one("SELECT COUNT(*) FROM items WHERE claimed_by IS NOT NULL")
        out["items_done_without_clip"] = one(
            "SELECT COUNT(*) FROM items i WHERE status='done' AND NOT EXISTS (SELECT 1 FROM clips WHERE id=i.clip_id)")
        out["steps_running"] = one("SELECT COUNT(*) FROM run_steps WHERE status='running'")
        out["catalogue_vectors"] = {r[0]: r[1] for r in c.execute("SELECT space, COUNT(*) FROM vectors GROUP BY space")}
        out["segments_without_vector"] = {
            sp: one(f"SELECT COUNT(*) FROM segments s WHERE NOT EXISTS (SELECT 1 FROM vectors v"
                    f" WHERE v.segment_id=s.id AND v.space='{sp}')") for sp in out["catalogue_vectors"]}
    with Library(lib, create=False) as L:
        kind = L.catalogue.get_meta("vector_store") or "faiss"
        out["prob_models"] = L.catalogue.prob_models()
        # the saved index as a restarted server would load it, before it syncs with the catalogue
        out["index_on_disk"] = {sp: open_store(kind, lib / "indexes" / sp, L.catalogue.vector_dim(sp)).count()
                                for sp in out["catalogue_vectors"]}
        out["index_after_sync"] = {sp: L.store(sp).count() for sp in L.spaces()}
        out["model_name"] = L.get_meta("model_name")
        out["serving_versions"] = [v["name"] for v in L.catalogue.model_versions("serving")]
        out["generation"] = L.catalogue.generation()
    out["ok"] = (out["integrity_check"] == ["ok"] and out["clips"] == out["distinct_content_hashes"]
                 and out["steps_running"] == 0 and out["items_claimed"] == 0 and out["items_done_without_clip"] == 0
                 and all(v == 0 for v in out["segments_without_vector"].values())
                 and out["index_after_sync"] == out["catalogue_vectors"]
                 and out["serving_versions"] == [out["model_name"]] and out["prob_models"] == [out["model_name"]])
    return out


# -- the searcher beside the loop --------------------------------------------------------------------------------
class Searcher:
    """Text searches back to back against `nels serve` (one at a time), each logged (start, end, HTTP status;
    0 = no answer); every 40th request also reads /api/stats' classifier (what the server serves now)."""

    def __init__(self, url: str, unique: bool = False):
        self.url, self.log, self.classifiers, self.unique = url, [], [], unique
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        i = 0
        names = list(CLASSES)
        while not self.stop.is_set():
            i += 1
            # unique: a number makes every query new, so none is answered from the server's answer cache
            text = f"{names[i % len(names)]} {i}" if self.unique else names[i % len(names)]
            q = urllib.parse.urlencode({"q": text, "k": 1 + i % 30})
            t0 = time.time()
            try:
                with urllib.request.urlopen(f"{self.url}/api/search?{q}", timeout=120) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = 0
            self.log.append((t0, time.time(), status))
            if i % 40 == 0:
                try:
                    with urllib.request.urlopen(f"{self.url}/api/stats", timeout=120) as r:
                        c = json.loads(r.read()).get("classifier")
                    if not self.classifiers or self.classifiers[-1][1] != c:
                        self.classifiers.append((time.time(), c))
                except OSError:
                    pass

    def count(self, a: float, b: float) -> dict:
        """Searches in flight at any moment of [a, b]: answered (200) and failed."""
        xs = [s for t0, t1, s in self.log if t1 >= a and t0 <= b]
        return {"answered": sum(s == 200 for s in xs), "failed": sum(s != 200 for s in xs)}


# -- the loop's processes ----------------------------------------------------------------------------------------
class Loop:
    def __init__(self, lib: Path, env: dict, logdir: Path):
        self.lib, self.env, self.logdir, self.n = lib, env, logdir, 0
        self.proc = None

    def start(self, *args: str) -> subprocess.Popen:
        self.n += 1
        self.proc = subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(self.lib), "run", "--quiet",
                                      *args], cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.logdir / f"run-{self.n}.stderr", "w"))
        return self.proc

    def wait_running(self, prefer: tuple[str, ...], prefer_for: float, until: float) -> dict | None:
        """The step running now, preferring one of `prefer` for up to `prefer_for` seconds (None: the process
        ended or `until` passed)."""
        t0 = time.time()
        while time.time() < until and self.proc.poll() is None:
            s = running_step(self.lib)
            if s is not None and (s["step"] in prefer or time.time() - t0 > prefer_for):
                return s
            time.sleep(0.3)
        return None


def lock_free(lib: Path) -> bool:
    from nels.learn.run import lock_holder

    return lock_holder(lib) is None


def kill9(loop: Loop, prefer_for: float, until: float) -> dict:
    s = loop.wait_running(("reindex", "learn", "ingest"), prefer_for, until)
    before = snapshot(loop.lib)
    done_before = {(x["cycle"], x["step"]) for x in steps_now(loop.lib) if x["status"] in ("done", "skipped")}
    t = time.time()
    loop.proc.send_signal(signal.SIGKILL)
    loop.proc.wait()
    rec = {"at": t, "pid": loop.proc.pid, "running": s and {"cycle": s["cycle"], "step": s["step"]},
           "exit": loop.proc.returncode, "lock_released": lock_free(loop.lib),
           "clips_before": len(before["hashes"]), "items_before": len(before["items"])}
    loop.start()  # saved options
    rec.update(_before=before, _done_before=done_before)
    return rec


def check_kill(rec: dict, lib: Path) -> dict:
    """After the restarted loop moved on: the killed step resumed, nothing done redone, nothing lost."""
    log = read_log(lib)
    run = rec.get("running")
    after_kill = [r for r in log if r["t"] > rec["at"]]
    if run:
        lines = [r for r in after_kill if r.get("cycle") == run["cycle"] and r.get("step") == run["step"]]
        rec["resumed_line"] = lines[0] if lines else None
        rec["resumed"] = bool(lines) and lines[0].get("resumed") is True and lines[0]["status"] != "running"
    redone = [(r["cycle"], r["step"]) for r in after_kill if (r.get("cycle"), r.get("step")) in rec["_done_before"]]
    rec["redone_steps"] = redone
    now = snapshot(lib)
    rec["lost_clips"] = len(rec["_before"]["hashes"] - now["hashes"])
    rec["lost_items"] = len(rec["_before"]["items"] - now["items"])
    rec["ok"] = (rec["lock_released"] and rec.get("resumed", True) and not redone and not rec["lost_clips"]
                 and not rec["lost_items"])
    for k in ("_before", "_done_before"):
        rec.pop(k)
    return rec


def sigterm(loop: Loop, prefer_for: float, until: float, restart: bool) -> dict:
    s = loop.wait_running(("learn", "reindex", "ingest"), prefer_for, until)
    t = time.time()
    loop.proc.send_signal(signal.SIGTERM)
    rc = loop.proc.wait()
    took = time.time() - t
    log = read_log(loop.lib)
    rec = {"at": t, "pid": loop.proc.pid, "running": s and {"cycle": s["cycle"], "step": s["step"]}, "exit": rc,
           "seconds_to_exit": round(took, 1), "lock_released": lock_free(loop.lib),
           "last_log": {k: log[-1].get(k) for k in ("event", "reason")} if log else None,
           "steps_left_running": sum(x["status"] == "running" for x in steps_now(loop.lib))}
    if s:
        fin = [r for r in log if r.get("cycle") == s["cycle"] and r.get("step") == s["step"] and r["t"] >= t]
        rec["running_step_finished_as"] = fin[-1]["status"] if fin else None
    rec["ok"] = (rc == 0 and rec["lock_released"] and rec["last_log"] == {"event": "stop", "reason": "signal"}
                 and rec["steps_left_running"] == 0 and (not s or rec.get("running_step_finished_as") is not None))
    if restart:
        loop.start()
    return rec


# -- the record -------------------------------------------------------------------------------------------------
def per_cycle(log: list[dict], searcher: Searcher, versions: list[dict]) -> list[dict]:
    by_cycle: dict[int, dict] = {}
    for r in log:
        if "step" not in r:
            continue
        c = by_cycle.setdefault(r["cycle"], {"cycle": r["cycle"], "steps": {}, "start": r["t"] - r["seconds"],
                                             "end": r["t"], "resumed": []})
        c["start"], c["end"] = min(c["start"], r["t"] - r["seconds"]), max(c["end"], r["t"])
        c["steps"][r["step"]] = {"status": r["status"], "s": r["seconds"]}
        if r.get("resumed"):
            c["resumed"].append(r["step"])
        if r["step"] == "crawl" and r["status"] == "done":
            c["listed"], c["new_items"] = r.get("listed"), r.get("new_items")
        elif r["step"] == "ingest" and r["status"] == "done":
            c["added"], c["failed_items"] = r.get("added"), r.get("failed")
        elif r["step"] == "learn" and r["status"] == "done":
            c["candidate_map"], c["serving_map"] = r.get("map"), r.get("serving_map")
            c["pool"], c["selected"], c["precision"] = r.get("pool"), r.get("selected"), r.get("precision")
        elif r["step"] == "gate" and r["status"] == "done":
            c["promoted"], c["reason"] = r.get("promoted"), r.get("reason")
        elif r["step"] == "reindex" and r["status"] == "done":
            c["reindexed_clips"] = r.get("clips")
            c["swap"] = searcher.count(r["t"] - SWAP_WINDOW, r["t"] + SWAP_WINDOW)
            c["during_reindex"] = searcher.count(r["t"] - r["seconds"], r["t"])
    for c in by_cycle.values():
        c["searches"] = searcher.count(c["start"], c["end"])
        c["wall_s"] = round(c["end"] - c["start"], 1)
    return [by_cycle[k] for k in sorted(by_cycle)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None, help="wall time of the unattended run")
    ap.add_argument("--cycles", type=int, default=None, help="instead: this many cycles, no kills")
    ap.add_argument("--per-class", type=int, default=50, help="videos per class on the site")
    ap.add_argument("--per-cycle", type=int, default=10, help="crawl results per cycle")
    ap.add_argument("--noise", type=float, default=1.0, help="noise amplitude of the tones (1: as loud as the tone)")
    ap.add_argument("--kill-at", type=float, default=0.35, help="kill -9 at this fraction of the wall time")
    ap.add_argument("--term-at", type=float, default=0.65, help="SIGTERM (and restart) at this fraction")
    ap.add_argument("--unique-queries", action="store_true",
                    help="every search a new query (none answered from nels serve's answer cache)")
    ap.add_argument("--out", default=None, help="JSON record (default bench/results/bench-run-DATE.json)")
    a = ap.parse_args()
    if (a.minutes is None) == (a.cycles is None):
        ap.error("give --minutes or --cycles")
    work = Path(tempfile.mkdtemp(prefix="nels-bench-run-"))
    tone_folders(work, CLASSES, {"seed": 3, "heldout": 6}, noise=a.noise)
    site = VideoSite(synthetic_videos(CLASSES, per_class=a.per_class, distractors=4 * len(CLASSES), seed=3,
                                      noise=a.noise))
    site.start()
    env = {**os.environ, "NELS_YTDLP_SEARCH": site.search_template, "PYTHONPATH": str(ROOT)}
    lib = work / "lib"
    from nels.ingest.runner import ingest
    from nels.store.library import Library

    with Library(lib) as L:  # a served library needs something in it: the seed clips of one class
        ingest(L, [str(work / "seed" / "low hum")], model="default")
    srv = Server(lib).start(timeout=900)
    searcher = Searcher(srv.url, a.unique_queries)
    searcher.thread.start()
    load = []
    t0 = time.time()
    loop = Loop(lib, env, work)
    args = ["--dataset", str(work / "seed"), "--format", "folders", "--heldout", str(work / "heldout"),
            "--allow-private", "--learn-every", "0", "--pause", "0", "--rate", "20", "--per-cycle", str(a.per_cycle),
            "--iterations", "2"]
    kills, terms = [], []
    if a.cycles is not None:
        loop.start(*args, "--cycles", str(a.cycles))
        loop.proc.wait()
    else:
        end = t0 + a.minutes * 60
        loop.start(*args)
        sampler = threading.Event()

        def sample_load():
            while not sampler.wait(30):
                load.append(os.getloadavg()[0])

        threading.Thread(target=sample_load, daemon=True).start()
        pause_until = lambda frac: t0 + frac * a.minutes * 60  # noqa: E731
        while time.time() < pause_until(a.kill_at) and loop.proc.poll() is None:
            time.sleep(1)
        kills.append(kill9(loop, prefer_for=240, until=end))
        while time.time() < pause_until(a.term_at) and loop.proc.poll() is None:
            time.sleep(1)
        kills[-1] = check_kill(kills[-1], lib)
        terms.append(sigterm(loop, prefer_for=240, until=end, restart=True))
        while time.time() < end and loop.proc.poll() is None:
            time.sleep(1)
        if loop.proc.poll() is None:
            terms.append(sigterm(loop, prefer_for=0, until=end + 60, restart=False))
        sampler.set()
    wall = time.time() - t0
    time.sleep(3)  # let the searcher see the last swap
    searcher.stop.set()
    searcher.thread.join()
    with urllib.request.urlopen(f"{srv.url}/api/stats", timeout=120) as r:
        served = json.loads(r.read()).get("classifier")
    srv.stop()
    site.stop()
    log = read_log(lib)
    with Library(lib, create=False) as L:
        versions = L.catalogue.model_versions()
        failures = L.stats()["failures"]
    cycles = per_cycle(log, searcher, versions)
    spans = [(r["t"] - r["seconds"], r["t"]) for r in log if r.get("step") == "reindex" and r["status"] == "done"]
    during = [searcher.count(x, y) for x, y in spans]
    swaps = [searcher.count(y - SWAP_WINDOW, y + SWAP_WINDOW) for _, y in spans]
    steps = {}
    for r in log:
        if "step" in r and r["status"] != "running":
            steps.setdefault(r["step"], []).append(r)
    done_twice = [k for k in {(r["cycle"], r["step"]) for r in log if "step" in r}
                  if sum(1 for r in log if (r.get("cycle"), r.get("step")) == k and r["status"] == "done") > 1]
    ok_searches = sum(s == 200 for _, _, s in searcher.log)
    record = {
        "command": "bench/bench_run.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "cpu": "Intel Xeon, family 6 model 167, 2 cores, AVX512-BF16/AMX", "wall_minutes": round(wall / 60, 1),
        "load_average": {"min": min(load, default=None), "mean": round(float(np.mean(load)), 1) if load else None,
                         "max": max(load, default=None)},
        "site": {"classes": CLASSES, "videos": len(site.videos), "noise": a.noise, "hits": site.hits},
        "processes_started": loop.n, "cycles_finished": sum(1 for c in cycles if "reindex" in c["steps"]),
        "cycles": cycles,
        "steps": {k: {"n": len(v), "mean_wall_s": round(float(np.mean([r["seconds"] for r in v])), 1),
                      "mean_cpu_s": round(float(np.mean([r["cpu_seconds"] for r in v])), 1),
                      "statuses": {s: sum(r["status"] == s for r in v) for s in {r["status"] for r in v}}}
                  for k, v in steps.items()},
        "versions": [{k: v[k] for k in ("name", "status", "cycle", "map", "reason")} for v in versions],
        "promoted": sum(1 for v in versions if v["cycle"] and v["status"] in ("serving", "retired")),
        "rejected": sum(1 for v in versions if v["status"] == "rejected"),
        "searches": {"answered": ok_searches, "failed": len(searcher.log) - ok_searches,
                     "during_reindex": {"answered": sum(d["answered"] for d in during),
                                        "failed": sum(d["failed"] for d in during)},
                     "within_5s_of_a_swap": {"answered": sum(d["answered"] for d in swaps),
                                             "failed": sum(d["failed"] for d in swaps)},
                     "swaps": len(spans)},
        "served_classifiers_seen": [c for _, c in searcher.classifiers], "served_classifier_at_end": served,
        "kill9": kills, "sigterm": terms, "steps_done_twice": done_twice,
        "seed_urls": {"planned": sum(r.get("seed_urls") or 0 for r in log if r.get("step") == "plan"),
                      "failed_items": [{k: f[k] for k in ("uri", "attempts", "error")} for f in failures]},
        "integrity": integrity(lib), "library": str(lib),
    }
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"bench-run-{time.strftime('%Y-%m-%d', time.gmtime(t0))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    summary(record)
    print(f"\nrecord: {out}")


def summary(r: dict) -> None:
    print(f"{r['command']}  ({r['date']}, {r['cpu']}, load {r['load_average']})")
    print(f"wall {r['wall_minutes']} min, {r['processes_started']} nels run processes, "
          f"{r['cycles_finished']} cycles finished, site {r['site']['videos']} videos")
    print("cycle  wall_s  new  added  cand_mAP serv_mAP  gate      searches ok/failed  reason")
    for c in r["cycles"]:
        g = {True: "promoted", False: "rejected"}.get(c.get("promoted"), c["steps"].get("gate", {}).get("status", "-"))
        s = c["searches"]
        print(f"{c['cycle']:>5} {c['wall_s']:>7} {c.get('new_items', '-'):>4} {c.get('added', '-'):>6}"
              f"  {c.get('candidate_map', '-')!s:>8} {c.get('serving_map', '-')!s:>8}  {g:<9} {s['answered']:>7}/{s['failed']:<5}"
              f"  {(c.get('reason') or '')[:70]}{'  (resumed: ' + ','.join(c['resumed']) + ')' if c['resumed'] else ''}")
    s = r["searches"]
    print(f"searches: {s['answered']} answered, {s['failed']} failed; during {s['swaps']} re-index steps "
          f"{s['during_reindex']['answered']}/{s['during_reindex']['failed']}; within 5 s of a swap "
          f"{s['within_5s_of_a_swap']['answered']}/{s['within_5s_of_a_swap']['failed']}")
    print(f"promoted {r['promoted']}, rejected {r['rejected']}; served classifiers seen by nels serve: "
          f"{len(r['served_classifiers_seen'])}, at the end {r['served_classifier_at_end']}")
    for k in r["kill9"]:
        print(f"kill -9 during {k['running']}: ok={k['ok']} lock released={k['lock_released']} resumed={k.get('resumed')}"
              f" redone={k['redone_steps']} lost clips={k['lost_clips']} items={k['lost_items']}")
    for t in r["sigterm"]:
        print(f"SIGTERM during {t['running']}: ok={t['ok']} exit={t['exit']} after {t['seconds_to_exit']} s,"
              f" step finished as {t.get('running_step_finished_as')}, lock released={t['lock_released']}")
    i = r["integrity"]
    print(f"integrity: ok={i['ok']} check={i['integrity_check']} clips={i['clips']} (distinct hashes "
          f"{i['distinct_content_hashes']}) vectors={i['catalogue_vectors']} index on disk={i['index_on_disk']}"
          f" after sync={i['index_after_sync']} serving={i['serving_versions']} items={i['items']}")
    print(f"steps done twice: {r['steps_done_twice']}")
    if r.get("seed_urls", {}).get("planned"):
        f = r["seed_urls"]["failed_items"]
        print(f"seed URLs planned: {r['seed_urls']['planned']}, failed items: {len(f)}"
              + (f" (attempts {sorted({x['attempts'] for x in f})}, e.g. {f[0]['error'][:100]})" if f else ""))


if __name__ == "__main__":
    main()
