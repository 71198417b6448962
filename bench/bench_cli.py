"""How long the `nels` command takes before it answers (issue 18, section 2).

Targets, on a 2-core machine: a usage error <= 1 s, a cold `nels search TEXT` (a fresh process that loads
the models) <= 3 s, a warm one (a running `nels serve` of the same library answers) <= 0.3 s.

    python3 bench/bench_cli.py --library LIB [--repeat 5] [--out bench/results/cli.json]

LIB must hold a text-searchable library (the default model); without --library a small one is built from
synthesised sounds. Each figure is the median of --repeat runs, as wall time and as the CPU time of the
`nels` process (user + system, from wait4), since a shared machine's wall time includes other people's load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
        bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    return f"{name}, {os.cpu_count()} cores, {'native bf16 (AVX512-BF16/AMX)' if bf16 else 'no native bf16'}"


def timed(args: list[str], env: dict) -> tuple[float, float, int, str]:
    """(wall s, cpu s, exit status, stderr) of one `python -m nels.cli ARGS` run."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "nels.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env, cwd=ROOT)
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, p.returncode, err


def measure(name: str, args: list[str], env: dict, repeat: int, expect: int = 0) -> dict:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu, rc, err = timed(args, env)
        if rc != expect:
            raise SystemExit(f"{name}: exit {rc} (expected {expect}): {err[-500:]}")
        walls.append(wall)
        cpus.append(cpu)
    row = {"what": name, "wall_s_median": round(statistics.median(walls), 3), "wall_s_min": round(min(walls), 3),
           "cpu_s_median": round(statistics.median(cpus), 3), "runs": repeat}
    print(f"{name:<48} wall {row['wall_s_median']:6.2f} s (min {row['wall_s_min']:.2f})"
          f"   cpu {row['cpu_s_median']:6.2f} s", flush=True)
    return row


def build_library(root: Path) -> Path:
    from devserver import build_library as build

    return build(root, model="default")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--query", default="rain on a roof")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    tmp = None
    lib = Path(a.library) if a.library else None
    if lib is None:
        tmp = tempfile.TemporaryDirectory()
        lib = build_library(Path(tmp.name))
    print(f"CPU: {cpu_name()}; NELS_BF16={os.environ.get('NELS_BF16', '(unset)')}; library {lib}", flush=True)
    rows = [measure("usage error (nels search, no query)", ["--library", str(lib), "search"], env, a.repeat, 2),
            measure("missing file (search --audio /no/such.wav)",
                    ["--library", str(lib), "search", "--audio", "/no/such.wav"], env, a.repeat, 2),
            measure(f"cold search '{a.query}' (--local)", ["--library", str(lib), "search", a.query, "--local"], env,
                    max(1, a.repeat // 2)),
            measure("cold search, a new query each run (--local)",
                    ["--library", str(lib), "search", f"{a.query} {time.time_ns()}", "--local"], env, 1)]
    # a running server of the library: its start (until it says it is ready), then warm CLI searches
    t0 = time.perf_counter()
    from devserver import free_port

    srv = subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(lib), "serve", "--port", str(free_port()),
                            "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                           text=True)
    try:
        for line in srv.stdout:
            if "nels: serving" in line:
                break
        start = time.perf_counter() - t0
        print(f"{'nels serve: start until ready (1 worker)':<48} wall {start:6.2f} s", flush=True)
        rows.append({"what": "nels serve start until ready (1 worker)", "wall_s_median": round(start, 3), "runs": 1})
        rows.append(measure(f"warm search '{a.query}' (server found)", ["--library", str(lib), "search", a.query],
                            env, a.repeat))
        rows.append(measure("warm search, new query (server found)",
                            ["--library", str(lib), "search", "wind through trees"], env, 1))
    finally:
        srv.terminate()
        srv.wait(30)
    out = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "bf16_env": os.environ.get("NELS_BF16"),
           "library": str(lib), "rows": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
