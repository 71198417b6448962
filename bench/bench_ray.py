"""Ingest throughput: the local runner (one core) against the Ray runner with 1 and 2 workers (one core
each) on this machine, runs alternated (local, ray x1, ray x2, local, ...) so that a change in the
machine's load hits every configuration alike; then a cost model for 10^5 hours of audio on N nodes from
the measured per-core rate.

    python bench/bench_ray.py [--clips 400] [--rounds 3] [--model default] [--json bench/results/ray.json]

Each run ingests the same ESC-50 clips (5 s each; synthesised sounds with --synth) into a fresh library
through the whole pipeline (reader, claims, mapper in the runner, writer on the driver). Per run:
    wall            seconds, end to end (Ray: actors start and build their encoders inside it)
    first           seconds to the first result (process start-up, encoder build, first clip)
    x_rt            audio seconds / wall
    x_rt_steady     audio after the first result / wall after it (start-up excluded)
    driver_cpu      CPU seconds of this process (local runner: everything; Ray: reader + writer)
    workers_cpu     CPU seconds of the Ray actors' processes, start-up (import, encoder build) included
    workers_startup CPU seconds of the actors up to their first task (process start, imports, encoders)
    busy            CPU seconds the whole machine spent during the run (/proc/stat; others' jobs included)
    load            1-minute load average when the run started
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, esc50

sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def cpu_name() -> str:
    info = {}
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        info.setdefault(k.strip(), v.strip())
    flags = set(info.get("flags", "").split())
    extra = "/".join(name for f, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if f in flags)
    return (f"{info.get('model name', platform.processor())}, family {info.get('cpu family')} model "
            f"{info.get('model')}, {os.cpu_count()} cores" + (f", {extra}" if extra else ""))


def machine_busy() -> float:
    """CPU seconds the machine has been busy since boot (all cores; idle and iowait excluded)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def corpus(n: int, synth: bool) -> list[str]:
    if not synth:
        return sorted(str(p) for p in (esc50() / "audio").iterdir())[:n]
    from conftest import synth as make, write_wav

    d = Path(tempfile.mkdtemp(prefix="bench-ray-corpus-"))
    kinds = ["tone", "high", "noise", "clicks", "chirp", "hum"]
    return [str(write_wav(d / f"s{i:04d}.wav", make(kinds[i % 6], seconds=5.0, seed=i))) for i in range(n)]


class Timed:
    """A runner wrapper noting when the first result came (and, for Ray, the actors' CPU seconds)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.first: float | None = None
        self.workers_cpu: float | None = None
        self.workers_startup: float | None = None

    def run(self, tasks, build):
        inner = self.inner
        if inner.name == "ray":
            real_stream = inner._stream

            def stream(ray, actors, tasks_):
                import psutil

                def cpu():
                    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in inner.worker_pids)

                self.workers_startup = cpu()  # the actors are built (they answered where()), no task yet
                yield from real_stream(ray, actors, tasks_)
                self.workers_cpu = cpu()  # still alive here: the runner kills them after its last result

            inner._stream = stream
        for out in inner.run(tasks, build):
            if self.first is None:
                self.first = time.perf_counter()
            yield out


def one_run(config: str, files: list[str], model: str, tmp: Path) -> dict:
    from nels.ingest.runner import IngestOptions, ingest
    from nels.ingest.runners import make_runner
    from nels.library import Library

    workers = {"local": None, "ray-1": 1, "ray-2": 2}[config]
    runner = Timed(make_runner("local") if workers is None else make_runner("ray", workers=workers))
    where = Path(tempfile.mkdtemp(prefix=f"lib-{config}-", dir=tmp))
    lib = Library(where)
    load = os.getloadavg()[0]
    busy0, cpu0, t0 = machine_busy(), time.process_time(), time.perf_counter()
    rep = ingest(lib, files, model=model, options=IngestOptions(progress=False), runner=runner)
    wall, cpu, busy = time.perf_counter() - t0, time.process_time() - cpu0, machine_busy() - busy0
    lib.close()
    shutil.rmtree(where, ignore_errors=True)  # the actors' catalogue handles close as they exit
    assert len(rep.added) == len(files) and not rep.failed, rep.to_dict()
    audio = rep.seconds_of_audio
    first = runner.first - t0
    steady = audio * (len(files) - 1) / len(files) / max(wall - first, 1e-9)
    return {"config": config, "wall": round(wall, 2), "first": round(first, 2), "audio": round(audio, 1),
            "x_rt": round(audio / wall, 1), "x_rt_steady": round(steady, 1), "driver_cpu": round(cpu, 2),
            "workers_cpu": None if runner.workers_cpu is None else round(runner.workers_cpu, 2),
            "workers_startup": None if runner.workers_startup is None else round(runner.workers_startup, 2),
            "busy": round(busy, 2), "load": round(load, 2)}


def cost_model(worker_xrt: float, writer_xrt: float, cores_per_node: int, price: float) -> list[dict]:
    """10^5 hours of audio on N nodes of `cores_per_node` cores, one Ray worker per core. The workers encode
    at N x cores x worker_xrt real time (the measured CPU rate of one worker; a cluster's cores are its
    own, unlike this machine's); one driver (reader + claims + writer, a core of its own) absorbs
    writer_xrt, so past that several drivers are needed, each on its share of the inputs: that takes the
    PostgreSQL catalogue (several writers); on SQLite the cluster stays at one driver's rate.
    Worker start-up (a few CPU seconds each) is left out: seconds in hours."""
    audio = 1e5 * 3600
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        rate = n * cores_per_node * worker_xrt
        drivers = math.ceil(rate / writer_xrt)
        hours = audio / rate / 3600
        rows.append({"nodes": n, "cores": n * cores_per_node, "x_rt": round(rate), "hours": round(hours, 1),
                     "drivers": drivers, "hours_one_driver": round(audio / min(rate, writer_xrt) / 3600, 1),
                     "core_hours": round(hours * (n * cores_per_node + drivers)),
                     "usd": round(hours * (n * cores_per_node + drivers) * price)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--synth", action="store_true", help="synthesised 5 s sounds instead of ESC-50")
    ap.add_argument("--cores-per-node", type=int, default=16, help="cost model: cores of one node")
    ap.add_argument("--price", type=float, default=0.04, help="cost model: USD per core-hour")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--report", default=None, metavar="JSON", help="summarise the runs of an earlier --json")
    a = ap.parse_args()
    if a.report:
        summarise(json.loads(Path(a.report).read_text())["runs"], a, "?", "?")
        return

    import ray
    import torch

    torch.set_num_threads(1)  # the local runner on one core, like one Ray worker
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", object_store_memory=200 * 1024 ** 2)
    files = corpus(a.clips, a.synth)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    runs = []
    try:
        one_run("local", files[:4], a.model, tmp)  # warm-up: imports, model files in the page cache
        for r in range(a.rounds):
            for config in ("local", "ray-1", "ray-2"):
                runs.append(one_run(config, files, a.model, tmp))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    summarise(runs, a, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), ray.__version__)


def summarise(runs: list[dict], a, date: str, ray_version: str) -> None:
    def med(config, key):
        return statistics.median(x[key] for x in runs if x["config"] == config)

    summary = {c: {k: med(c, k) for k in ("wall", "first", "x_rt", "x_rt_steady", "driver_cpu", "busy", "load")}
               for c in ("local", "ray-1", "ray-2")}
    for c in ("ray-1", "ray-2"):
        summary[c]["workers_cpu"] = med(c, "workers_cpu")
        summary[c]["workers_startup"] = med(c, "workers_startup")
    loc, r1, r2 = summary["local"], summary["ray-1"], summary["ray-2"]
    # CPU per run, start-up excluded: robust to other jobs on the machine (they take cores, not CPU seconds)
    ray_cpu = {c: summary[c]["driver_cpu"] + summary[c]["workers_cpu"] - summary[c]["workers_startup"]
               for c in ("ray-1", "ray-2")}
    figures = {
        "ray1_cpu_overhead_steady": round(ray_cpu["ray-1"] / loc["driver_cpu"] - 1, 3),
        "ray2_cpu_overhead_steady": round(ray_cpu["ray-2"] / loc["driver_cpu"] - 1, 3),
        "worker_startup_cpu_s": round(r1["workers_startup"], 2),
        "ray1_overhead_end_to_end": round(loc["x_rt"] / r1["x_rt"] - 1, 3),
        "ray1_overhead_steady": round(loc["x_rt_steady"] / r1["x_rt_steady"] - 1, 3),
        "ray2_speedup_end_to_end": round(r2["x_rt"] / loc["x_rt"], 2),
        "ray2_speedup_steady": round(r2["x_rt_steady"] / loc["x_rt_steady"], 2),
    }
    audio = runs[0]["audio"]
    per_core = audio / loc["driver_cpu"]  # local runner: all its work on one core
    worker = audio / (r2["workers_cpu"] - r2["workers_startup"])  # a Ray worker's rate per CPU second
    writer = audio / r2["driver_cpu"]  # what one driver (reader + claims + writer) absorbs per CPU second
    cost = cost_model(worker, writer, a.cores_per_node, a.price)
    clips = round(audio / 5)
    out = {"date": date, "cpu": cpu_name(), "clips": clips,
           "audio_seconds": audio, "model": a.model, "ray": ray_version, "runs": runs, "median": summary,
           "figures": figures, "per_core_x_rt": round(per_core, 1), "writer_x_rt": round(writer, 1),
           "worker_x_rt": round(worker, 1), "cost_model": cost,
           "cost_assumptions": {"cores_per_node": a.cores_per_node, "usd_per_core_hour": a.price}}
    print(f"\n{out['date']}; {out['cpu']}; {clips} clips, {audio:.0f} s of audio, model {a.model}, Ray {ray_version}")
    print(f"{'runner':<8}{'wall s':>8}{'first s':>8}{'x rt':>8}{'x rt steady':>12}{'driver cpu':>11}"
          f"{'workers cpu':>12}{'machine busy':>13}{'load':>6}")
    for c, s in summary.items():
        wc = s.get("workers_cpu")
        print(f"{c:<8}{s['wall']:>8.1f}{s['first']:>8.1f}{s['x_rt']:>8.0f}{s['x_rt_steady']:>12.0f}"
              f"{s['driver_cpu']:>11.1f}{'-' if wc is None else f'{wc:.1f}':>12}{s['busy']:>13.1f}{s['load']:>6.2f}")
    print(f"Ray overhead at 1 worker: {figures['ray1_overhead_end_to_end']:+.1%} end to end, "
          f"{figures['ray1_overhead_steady']:+.1%} steady (target <= 15 %); in CPU seconds, start-up excluded: "
          f"{figures['ray1_cpu_overhead_steady']:+.1%} (1 worker), {figures['ray2_cpu_overhead_steady']:+.1%} (2)"
          f"; start-up {figures['worker_startup_cpu_s']:.1f} CPU s per worker")
    print(f"Ray at 2 workers: {figures['ray2_speedup_end_to_end']:.2f}x end to end, "
          f"{figures['ray2_speedup_steady']:.2f}x steady (target >= 1.7x)")
    print(f"per core: the local runner {per_core:.0f}x real time, a Ray worker {worker:.0f}x (CPU, steady);"
          f" one driver absorbs up to {writer:.0f}x real time of 5-s items per CPU second")
    print(f"cost of 10^5 h of audio ({a.cores_per_node} cores/node, one worker per core, {a.price} USD/core-hour):")
    print(f"  {'nodes':>5} {'cores':>6} {'x rt':>8} {'hours':>7} {'drivers':>8} {'core-h':>7} {'USD':>6}"
          f" {'hours with one driver (SQLite)':>31}")
    for row in cost:
        print(f"  {row['nodes']:>5} {row['cores']:>6} {row['x_rt']:>8} {row['hours']:>7.1f} {row['drivers']:>8}"
              f" {row['core_hours']:>7} {row['usd']:>6} {row['hours_one_driver']:>31.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
