"""`nels run` against the loopback video site (synthesised tones, the shipped CNN): the gate and the planner alone,
then the loop end to end in subprocesses — crawl, ingest, learn, promote, re-index; a second instance refused;
kill -9 in the middle of a step and a restart that resumes it; SIGTERM that finishes the step and stops — and a
re-index swapped in while `nels serve` keeps answering. Every wait is on the library's state, never on a clock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from devserver import Server
from videosite import VideoSite, synthetic_videos, tone_folders

from nels.learn import gate, planner
from nels.store.catalogue import Catalogue
from nels.store.library import Library

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"low hum": 200.0, "whistle": 2500.0, "beep": 800.0}


# -- the gate and the planner ---------------------------------------------------------------------------------------
def test_gate_promotes_only_without_a_drop_or_a_class_loss():
    old = {"a": 0.8, "b": 0.6, "c": None}
    ok = gate.decide({"a": 0.85, "b": 0.58, "c": 0.9}, old, margin=0.05)
    assert ok.promote and "c" in ok.reason  # b lost 0.02 < margin; c is new (measured only now)
    drop = gate.decide({"a": 0.7, "b": 0.6}, old, margin=0.2)
    assert not drop.promote and "drop" in drop.reason
    lost = gate.decide({"a": 0.95, "b": 0.5}, old, margin=0.05)  # mean rises, but b loses 0.1
    assert not lost.promote and "b -0.100" in lost.reason
    assert gate.decide({"x": 0.9}, {"x": None}).promote  # the serving model knows no held-out class
    assert not gate.decide({"x": None}, {"x": None}).promote


def test_planner_budget_favours_weak_and_small_classes(tmp_path):
    w = planner.class_weights(["good", "weak", "new"], {"good": 0.9, "weak": 0.3}, {"good": 40, "weak": 40})
    assert w["new"] > w["weak"] > w["good"]  # unknown AP counts 0.5; an empty pool adds 1
    alloc = planner.allocate(w, 10)
    assert sum(alloc.values()) == 10 and alloc["weak"] > alloc["good"] >= 1
    assert planner.allocate(w, 2) == {"new": 1, "weak": 1, "good": 0}
    qs = planner.class_queries("dog", planner.vocabulary_entries()["dog"])
    assert qs[0] == ("dog", "name") and ("dog barking", "synonym") in qs
    cat = Catalogue(tmp_path / "nels.db")
    planner.ensure_queries(cat, ["dog", "low hum"])
    plan = planner.plan(cat, ["dog", "low hum"], {"dog": 0.9}, per_cycle=10, per_query_max=10)
    assert sum(p.n for p in plan) == 10 and {p.label for p in plan} == {"dog", "low hum"}
    assert sum(p.n for p in plan if p.label == "low hum") > sum(p.n for p in plan if p.label == "dog")
    assert planner.in_quiet_hours((22, 6), 23) and planner.in_quiet_hours((22, 6), 3)
    assert not planner.in_quiet_hours((22, 6), 12) and not planner.in_quiet_hours(None)
    with pytest.raises(ValueError):
        planner.parse_quiet_hours("late")


def test_host_limiter_spaces_requests_per_host():
    lim = planner.HostLimiter(1000.0)
    lim.wait("http://a.example/1")
    first = lim.next_at["a.example"]
    lim.wait("http://a.example/2")
    assert lim.next_at["a.example"] == pytest.approx(first + 0.001)
    lim.wait("http://b.example/1")  # another host has its own schedule
    assert set(lim.next_at) == {"a.example", "b.example"}


def test_failpoints_parse_and_pass_through_when_unset(monkeypatch, tmp_path):
    from nels import failpoints

    assert failpoints.parse("run.learn=hold:/x/held, a=hold:y") == {"run.learn": "hold:/x/held", "a": "hold:y"}
    for bad in ("run.learn", "run.learn=sleep:1", "=hold:x", "run.learn=hold:"):
        with pytest.raises(ValueError, match="NELS_FAILPOINTS"):
            failpoints.parse(bad)
    monkeypatch.setenv("NELS_FAILPOINTS", f"other=hold:{tmp_path / 'h'}")
    failpoints.hit("run.learn")  # not named: returns at once, touches nothing
    assert not (tmp_path / "h").exists()


# -- the loop end to end --------------------------------------------------------------------------------------------
def _datasets(root: Path) -> tuple[Path, Path]:
    d = tone_folders(root, CLASSES, {"seed": 3, "heldout": 3})
    return d["seed"], d["heldout"]


@pytest.fixture
def site():
    s = VideoSite(synthetic_videos(CLASSES, per_class=4, distractors=2, seed=2))
    s.start()
    yield s
    s.stop()


def _env(site: VideoSite) -> dict:
    return {**os.environ, "NELS_YTDLP_SEARCH": site.search_template,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _nels(library: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(library), "run", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen | None = None, what: str = "", limit: float = 600.0):
    """Poll `cond()` until true; fail if the process dies first (or after a generous safety limit)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"nels run exited ({proc.returncode}) before {what}: {err[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _step(library: Path, cycle: int, step: str) -> dict | None:
    cat = Catalogue(library / "nels.db")
    try:
        return cat.step_detail(cycle, step)
    finally:
        cat.close()


def _log(library: Path) -> list[dict]:
    return [json.loads(line) for line in (library / "run.log").read_text().splitlines()]


def test_run_crawls_learns_promotes_survives_kill_and_sigterm(tmp_path, site):
    seed, held = _datasets(tmp_path)
    library = tmp_path / "lib"
    Library(library).close()
    env = _env(site)
    args = ["--dataset", str(seed), "--format", "folders", "--heldout", str(held), "--allow-private",
            "--learn-every", "0", "--pause", "0", "--rate", "100", "--per-cycle", "9", "--iterations", "1",
            "--no-audioset-examples"]  # whistle and beep are AudioSet classes: no YouTube seeds in a test
    held_at = tmp_path / "held-in-learn"  # the run holds in its learning step (nels/failpoints.py) until killed
    first = _nels(library, *args, env={**env, "NELS_FAILPOINTS": f"run.learn=hold:{held_at}"})
    # kill -9 in the middle of the learning step of cycle 1
    _wait_for(held_at.exists, first, "learning started")
    assert _step(library, 1, "learn")["status"] == "running"
    second = _nels(library, "--once", env=env)  # the library is held: refused, nothing done
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and "another 'nels run'" in err
    first.kill()
    first.wait()
    assert _step(library, 1, "learn")["status"] == "running"  # left mid-step
    ingested = _step(library, 1, "ingest")["detail"]["added"]
    assert ingested > 0 and site.hits["search"] >= 3 and site.hits["media"] >= ingested

    # a restart (saved options) resumes the step that was running and finishes the cycle
    resumed = _nels(library, "--cycles", "1", env=env)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    log = _log(library)
    learn_lines = [r for r in log if r.get("step") == "learn" and r.get("cycle") == 1]
    assert learn_lines[-1]["resumed"] is True and learn_lines[-1]["status"] == "done"
    assert [r["step"] for r in log if r.get("cycle") == 1 and "status" in r].count("crawl") == 1  # not redone
    gate_line = next(r for r in log if r.get("step") == "gate" and r.get("cycle") == 1)
    assert gate_line["promoted"] is True and gate_line["reason"]
    lib = Library(library, create=False)
    try:
        serving = lib.catalogue.model_versions("serving")
        assert [v["name"] for v in serving] == [gate_line["version"]]
        assert lib.get_meta("model_name") == gate_line["version"] and lib.catalogue.generation() == 1
        assert lib.catalogue.prob_models() == [gate_line["version"]]  # every clip re-indexed by the new model
        assert lib.catalogue.staged_clip_ids(f"{gate_line['version']}:") == set()
        clips = lib.stats()["clips"]
        assert clips == lib.conn.execute("SELECT COUNT(DISTINCT content_hash) FROM clips").fetchone()[0]
        assert set(serving[0]["per_class"]) == set(CLASSES)  # measured on the held-out classes
        assert lib.catalogue.model_versions("retired")[0]["cycle"] == 0  # the seed CNN
    finally:
        lib.close()

    # SIGTERM while a step runs: that step finishes, then the loop stops (exit 0), nothing left running
    last = _nels(library, env=env)
    _wait_for(lambda: _step(library, 2, "crawl") is not None, last, "cycle 2 started")
    last.send_signal(signal.SIGTERM)
    out, err = last.communicate(timeout=900)
    assert last.returncode == 0, err[-3000:]
    assert _log(library)[-1]["event"] == "stop" and _log(library)[-1]["reason"] == "signal"
    cat = Catalogue(library / "nels.db")
    try:
        assert all(s["status"] != "running" for s in cat.run_steps())
    finally:
        cat.close()
    st = subprocess.run([sys.executable, "-m", "nels.cli", "--library", str(library), "status", "--json"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
    status = json.loads(st.stdout)
    assert status["running"] is False and status["now"]["step"] == "stopped"
    assert any(v["status"] == "serving" for v in status["versions"]) and status["cycles"][0]["cycle"] == 2


# -- re-index without downtime ---------------------------------------------------------------------------------------
def test_serve_keeps_answering_through_the_swap(tmp_path, sounds):
    from nels.ingest.runner import ingest
    from nels.learn.heads import save_with_head
    from nels.errors import NelsError
    from nels.learn.run import ensure_seed_version, load_head, rollback, swap_in

    lib = Library(tmp_path / "lib")
    ingest(lib, [str(sounds)], model="default")
    seed = ensure_seed_version(lib)
    W, b, labels = load_head(seed["path"])
    rng = np.random.default_rng(0)  # a new version with one more class, which only it can be searched for
    new_path = save_with_head(Path(seed["path"]), tmp_path / "v2", np.concatenate([W, rng.normal(0, 0.1, (1, W.shape[1]))]),
                              np.concatenate([b, [5.0]]), labels + ["zither twang"], "cnn-v2-test")
    results: list[tuple[int, bool]] = []  # (HTTP status, a result's top label is the new class)
    stop = threading.Event()

    srv = Server(lib.path).start(timeout=600)  # a loaded machine starts a server slowly: readiness, not a clock
    with srv:
        def hammer():
            i = 0
            while not stop.is_set():
                i += 1
                q = urllib.parse.urlencode({"q": "zither twang" if i % 2 else "dog", "k": 1 + i % 40})
                try:
                    with urllib.request.urlopen(f"{srv.url}/api/search?{q}", timeout=60) as r:
                        body = json.loads(r.read())
                        top = {lab["label"] for row in body["results"] for lab in row.get("labels", [])[:1]}
                        results.append((r.status, "zither twang" in top))
                except urllib.error.HTTPError as e:
                    results.append((e.code, False))

        th = threading.Thread(target=hammer, daemon=True)
        th.start()
        marks = {}

        def staged():  # every clip staged, swap next: make sure searches ran meanwhile
            marks["staged"] = len(results)
            _wait_for(lambda: len(results) >= marks["staged"] + 3, what="searches while staged")

        marks["start"] = len(results)
        lib.catalogue.add_model_version("cnn-v2-test", str(new_path), seed["name"], 1, "promoting", None, None)
        swap_in(lib, str(new_path), "cnn-v2-test", on_staged=staged)
        marks["swapped"] = len(results)
        _wait_for(lambda: any(r[1] for r in results[marks["swapped"]:]), what="the new model answering")
        stop.set()
        th.join()
    assert results and all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]  # 0 failed
    assert marks["swapped"] >= marks["staged"] + 3  # searches ran while the new encodings were staged...
    assert not any(r[1] for r in results[:marks["staged"] + 3])  # ...answered by the old model alone
    assert lib.get_meta("model_name") == "cnn-v2-test" and lib.catalogue.generation() == 1
    assert [v["name"] for v in lib.catalogue.model_versions("serving")] == ["cnn-v2-test"]
    rollback(lib, seed["name"])  # the seed CNN serves again, swapped in the same way
    assert lib.get_meta("model_name") == seed["name"] and lib.catalogue.generation() == 2
    assert lib.catalogue.prob_models() == [seed["name"]]
    assert {v["name"]: v["status"] for v in lib.catalogue.model_versions()} == {seed["name"]: "serving",
                                                                                  "cnn-v2-test": "retired"}
    with pytest.raises(NelsError):
        rollback(lib, "no-such-version")
    lib.close()


# -- what the user sees: nels status / the /run page, and accepting a logged query as a class -----------------------
def test_run_page_status_chart_and_accepting_a_class(tmp_path):
    from fastapi.testclient import TestClient

    from nels.cli import main
    from nels.learn.run import ensure_seed_version
    from nels.web.app import create_app

    lib = Library(tmp_path / "lib")
    seed = ensure_seed_version(lib)
    lib.catalogue.set_version_scores(seed["name"], 0.5, {"dog": 0.6, "rain": 0.4})
    lib.catalogue.add_model_version("v-c1", str(tmp_path / "v1"), seed["name"], 1, "rejected", 0.45,
                                    {"dog": 0.7, "rain": 0.2}, reason="classes would lose more than 0.05 AP: rain -0.200")
    lib.catalogue.step_start(1, "gate")
    lib.catalogue.step_finish(1, "gate", "done", {"promoted": False, "reason": "rain -0.200"})
    lib.catalogue.log_weak_query("zither twang", 0.21, "guitar")
    lib.catalogue.log_weak_query("zither twang", 0.21, "guitar")
    with TestClient(create_app(lib.path, admin_token="secret")) as c:
        assert c.get("/api/admin/run").status_code in (401, 403)  # admin only
        auth = {"Authorization": "Bearer secret"}
        st = c.get("/api/admin/run", headers=auth).json()
        assert st["running"] is False and [v["status"] for v in st["versions"]] == ["serving", "rejected"]
        assert st["cycles"][0]["promoted"] is False and st["candidates"][0]["query"] == "zither twang"
        png = c.get(st["chart"], headers=auth)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert "run-view" in c.get("/run").text
        assert c.get("/static/run.js").status_code == 200
        r = c.post("/api/admin/vocabulary/accept", headers=auth, json={"query": "zither twang"})
        assert r.status_code == 201 and r.json()["was_logged"] is True
        assert c.post("/api/admin/vocabulary/accept", headers=auth, json={"query": "  "}).status_code == 422
    assert main(["--library", str(lib.path), "vocabulary", "accept", "kazoo", "--also", "kazoo buzzing"]) == 0
    new = lib.get_meta("run.new_classes")
    assert set(new) == {"zither twang", "kazoo"} and new["kazoo"]["queries"] == ["kazoo", "kazoo buzzing"]
    assert lib.catalogue.weak_queries("accepted")[0]["query"] == "zither twang"
    planned = {q["query"]: q["label"] for q in lib.catalogue.crawl_queries()}
    assert planned["kazoo buzzing"] == "kazoo" and planned["zither twang"] == "zither twang"
    assert main(["--library", str(lib.path), "status"]) == 0
    lib.close()


def test_a_class_accepted_from_the_query_log_is_crawled_bootstrapped_learned_and_gated(tmp_path, site, monkeypatch):
    from nels.learn.run import RunOptions, accept_class, run

    seed, held = _datasets(tmp_path)
    import shutil

    shutil.rmtree(seed / "beep")  # the seed knows low hum and whistle; the held-out set also has beep clips
    monkeypatch.setenv("NELS_YTDLP_SEARCH", site.search_template)
    lib = Library(tmp_path / "lib")
    lib.catalogue.log_weak_query("beep", 0.2, "whistle")  # asked, weakly covered
    accept_class(lib, "beep")
    run(lib, RunOptions(dataset=str(seed), fmt="folders", heldout=str(held), allow_private=True, learn_every=0.0,
                        pause=0.0, rate=100.0, per_cycle=9, iterations=1, audioset_examples=False), cycles=1, echo=False,
        install_signals=False)
    crawled = {q["query"]: q["runs"] for q in lib.catalogue.crawl_queries()}
    assert crawled["beep"] == 1  # the new class's query was crawled
    learn = lib.catalogue.step_detail(1, "learn")["detail"]
    assert learn["bootstrapped"] >= 2  # its clips labelled from the query that found them
    cand = lib.catalogue.model_versions()[-1]
    assert cand["cycle"] == 1 and cand["per_class"]["beep"] >= 0.5  # measured on its held-out clips
    assert (cand["detail"]["serving_per_class"] or {}).get("beep") is None  # the seed model lacked it
    assert cand["status"] == "serving" and "beep" in cand["reason"]  # promoted through the same gate
    assert "beep" in lib.catalogue.model_labels(cand["name"])  # search knows it now
    lib.close()


def test_caps_and_quiet_hours_stop_crawling(tmp_path):
    from nels.learn.run import Context, RunOptions, step_crawl, step_ingest

    lib = Library(tmp_path / "lib")
    ctx = Context(lib, RunOptions(quiet_hours="0-24"), tmp_path / "run.log", echo=False)
    assert step_crawl(ctx, 1) == ("skipped", {"reason": "quiet hours (0-24)"})
    ctx.opts = RunOptions(max_hours=0.0)
    lib.set_meta("run.audio_at_start", 0.0)
    status, detail = step_ingest(ctx, 1)
    assert status == "skipped" and "--max-hours" in detail["reason"]
    ctx.opts = RunOptions(max_gb=0.0)
    assert "--max-gb" in step_crawl(ctx, 1)[1]["reason"]
    lib.close()


def test_warm_start_fine_tunes_the_serving_head():
    from nels.learn import loop, select

    rng = np.random.default_rng(0)
    C, d = 4, 8
    centres = rng.standard_normal((C, d)) * 2

    def split(n_per):
        y = np.repeat(np.arange(C), n_per)
        X = centres[np.repeat(y, 2)] + rng.standard_normal((len(y) * 2, d)) * 3.0
        return loop.Split(X.astype(np.float32), np.repeat(np.arange(len(y)), 2), y)

    big, tiny, pool, test = split(40), split(1), split(10), split(20)
    good = loop.train_head(big.X, big.y[big.clip], C)  # the "serving" head, trained on much more data
    same = loop.train_head(tiny.X, tiny.y[tiny.clip], C, steps=0, init=good)
    assert np.array_equal(same[0], good[0]) and np.array_equal(same[1], good[1])  # 0 steps: the init itself
    data = loop.LoopData([f"c{i}" for i in range(C)], tiny, pool, test)
    cold, _ = loop.run(data, select.Clarity(0.2, 1.0), iterations=1, cap=2, patience=5)
    warm, _ = loop.run(data, select.Clarity(0.2, 1.0), iterations=1, cap=2, patience=5, init=good, steps=50, lr=0.005)
    assert warm[0]["map"] > cold[0]["map"]  # from one clip per class, fine-tuning keeps what the head knew
