"""The Ray runner on a real two-node Ray cluster on this machine (a head and a second node, one CPU each,
started once for the module): the same library as the local runner; a worker process killed with -9
mid-run costs nothing (Ray restarts it and runs its tasks again); a driver killed with -9 mid-run is
resumed from the catalogue by the next run, which fetches nothing already stored.

Skipped where Ray is not installed (`pip install "nels[scale]"`)."""
from __future__ import annotations

import http.server
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import synth, write_wav

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["tone", "high", "noise", "clicks", "chirp", "hum"]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head and a second Ray node (separate raylets, one CPU each), this process its driver."""
    from ray.cluster_utils import Cluster

    small = 80 * 1024 ** 2  # object store per node: results are a few hundred kB
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "object_store_memory": small})
    c.add_node(num_cpus=1, object_store_memory=small)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()


class _Site:
    """WAV files on 127.0.0.1, counting GETs per path; requests for the paths in `held` wait until
    `release` is set (so a test can act while a worker is mid-fetch)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.gets, self.held = files, Counter(), set()
        self.waiting = threading.Semaphore(0)  # one release per held request that arrived
        self.release = threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                site.gets[name] += 1
                if name in site.held and not site.release.is_set():
                    site.waiting.release()
                    site.release.wait(120)  # a bound only: the test sets it
                body = site.files.get(name)
                try:
                    if body is None:
                        self.send_error(404)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/wav")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client was killed while it waited
                    pass

            def log_message(self, *a):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.srv = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def urls(self) -> list[str]:
        return [f"{self.base}/{n}" for n in sorted(self.files)]

    def close(self):
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


def _wav_bytes(tmp: Path, n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        p = write_wav(tmp / f"clip{i:02d}.wav", synth(KINDS[i % len(KINDS)], seconds=1.5 + 0.25 * i, seed=i))
        out[p.name] = p.read_bytes()
    return out


def _hashes(lib_dir: Path, *also: str) -> list:
    """The content hashes of the clips stored (with the `also` columns: tuples)."""
    from nels.store.catalogue import Catalogue

    cat = Catalogue(lib_dir / "nels.db")
    try:
        return [r[1] if not also else tuple(r[1:]) for r in cat.clips(("id", "content_hash", *also))]
    finally:
        cat.close()


def test_ray_runner_gives_the_reference_library(tmp_path, cluster):
    from test_runners import assert_same_library

    from nels.ingest.runner import IngestOptions, ingest
    from nels.ingest.runners import make_runner, runner_names
    from nels.library import Library

    assert "ray" in runner_names()
    corpus = tmp_path / "corpus"
    for i, kind in enumerate(KINDS):
        write_wav(corpus / f"{kind}.wav", synth(kind, seconds=2.5 + i, seed=i))
    write_wav(corpus / "copy-of-tone.wav", synth("tone", seconds=2.5, seed=0))  # a duplicate
    (corpus / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")  # a decode failure
    ref, lib = Library(tmp_path / "ref"), Library(tmp_path / "ray")
    ref_rep = ingest(ref, [str(corpus)], model="default", options=IngestOptions(progress=False),
                     runner=make_runner("local"))
    runner = make_runner("ray", workers=2)
    rep = ingest(lib, [str(corpus)], model="default", options=IngestOptions(progress=False), runner=runner)
    assert len(set(runner.worker_nodes)) == 2  # one actor on each node: the work did cross nodes
    assert len(rep.added) == len(ref_rep.added) == 6 and rep.duplicates == ref_rep.duplicates == 1
    assert [u for u, _ in rep.failed] == [u for u, _ in ref_rep.failed] and len(rep.failed) == 1
    assert_same_library(ref, lib)
    again = ingest(lib, [str(corpus)], model="default", options=IngestOptions(progress=False), runner=runner)
    assert again.added == [] and again.duplicates == 0
    # reindex is the same pipeline over the library's own clips: the same re-encoded library too
    from nels.ingest.reindex import reindex

    done_ref = reindex(ref, "baseline", progress=False, runner=make_runner("local"))
    done = reindex(lib, "baseline", progress=False, runner=runner)
    assert done["clips"] == done_ref["clips"] == 6 and done["failed"] == done_ref["failed"] == 0
    assert_same_library(ref, lib)
    ref.close()
    lib.close()


def test_tasks_are_pulled_only_as_results_are_taken(cluster):
    """Backpressure: the runner reads the (lazy) tasks no further ahead of the results taken than its bound,
    so a crawl of any length holds a bounded number of items; results come in task order."""
    from nels.ingest.runners import make_runner

    runner = make_runner("ray", workers=2, per_worker=2, batch=2, max_in_flight=6)
    pulled = 0

    def tasks():
        nonlocal pulled
        for i in range(60):
            pulled += 1
            yield i

    build = lambda: (lambda t: t * t)  # noqa: E731 - a lambda: Ray's cloudpickle ships it by value
    got, ahead = [], []
    for r in runner.run(tasks(), build):
        got.append(r)
        ahead.append(pulled - len(got))
    assert got == [i * i for i in range(60)]
    assert max(ahead) <= 6  # pulled ahead of what was taken: never more than max_in_flight


def test_workers_that_cannot_build_are_a_clear_error(cluster):
    from nels.errors import NelsError
    from nels.ingest.runners import make_runner

    def build():  # a local function: Ray's cloudpickle ships it by value
        raise FileNotFoundError("no model at /nowhere")

    with pytest.raises(NelsError, match="could not start: .*no model at /nowhere"):
        list(make_runner("ray", workers=2).run(iter(range(3)), build))


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, cluster):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.ingest.runners import make_runner
    from nels.library import Library

    site = _Site(_wav_bytes(tmp_path / "src", 8))
    site.held = {"clip00.wav"}  # the first task: actor 0's (the first call goes to the first actor)
    lib = Library(tmp_path / "lib")
    runner = make_runner("ray", workers=2)
    result: dict = {}

    def drive():
        try:
            result["report"] = ingest(lib, site.urls(), model="default", options=IngestOptions(progress=False),
                                      runner=runner)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    th = threading.Thread(target=drive, daemon=True)
    th.start()
    try:
        assert site.waiting.acquire(timeout=120), result  # actor 0 is mid-fetch
        victim = runner.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        site.release.set()
        th.join(300)
        assert not th.is_alive()
    finally:
        site.close()
    assert "error" not in result, result.get("error")
    rep = result["report"]
    assert len(rep.added) == 8 and rep.failed == [] and rep.duplicates == 0
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    hashes = _hashes(lib.path)
    assert len(hashes) == len(set(hashes)) == 8  # nothing lost, nothing stored twice
    assert sum(site.gets.values()) > 8  # the killed worker's task(s) were fetched again
    lib.close()


def test_a_driver_killed_mid_run_is_resumed_from_the_catalogue(tmp_path, cluster):
    site = _Site(_wav_bytes(tmp_path / "src", 6))
    site.held = {"clip05.wav"}  # the first run stores some clips (how many: batching decides), never all
    lib = tmp_path / "lib"
    cmd = [sys.executable, "-m", "nels.cli", "--library", str(lib), "ingest", *site.urls(), "--model", "default",
           "--runner", "ray", "--ray-address", cluster.address, "--processes", "2", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while not site.waiting.acquire(timeout=0.2):  # the driver is set up: a worker fetches clip05
            assert driver.poll() is None, driver.communicate()
        while not _hashes(lib):  # wait for a stored clip
            assert driver.poll() is None, driver.communicate()
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        stored = {h: uri for h, uri in _hashes(lib, "source_uri")}
        assert 1 <= len(stored) < 6
        before = Counter(site.gets)
        site.release.set()
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        site.close()
    import json

    rep = json.loads(again.stdout)
    assert rep["added"] == 6 - len(stored) and rep["failed"] == [] and rep["duplicates"] == 0
    for uri in stored.values():  # stored before the kill: not fetched again
        name = uri.rsplit("/", 1)[-1]
        assert site.gets[name] == before[name] == 1, name
    hashes = _hashes(lib)
    assert len(hashes) == len(set(hashes)) == 6
