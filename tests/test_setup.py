"""setup.sh says what it is doing (issue 18, section 7: "print progress during setup"): one line per step, each
with the seconds since it started, in the order the steps run. `--dry-run` goes through the same steps and
checks (is torch there? chromium?) printing the commands instead of running them, so this test installs
nothing and takes about a second per run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^\[setup (\d+) s\] (.*)$")

if shutil.which("bash") is None:
    pytest.skip("no bash", allow_module_level=True)


def run_setup(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "setup.sh"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def steps(out: str) -> list[tuple[int, str]]:
    """(seconds, text) of every step line; every other line is a dry run's "would run: ..." under its step."""
    rows = []
    for line in out.splitlines():
        m = STEP.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
        else:
            assert line.startswith("    would run: "), f"not a step line: {line!r}"
            rows.append((-1, line.strip()))
    return rows


def expect_in_order(rows: list[tuple[int, str]], patterns: list[str]) -> None:
    texts = [t for _, t in rows]
    at = 0
    for p in patterns:
        while at < len(texts) and not re.match(p, texts[at]):
            at += 1
        assert at < len(texts), f"no line matching {p!r} after the previous ones in:\n" + "\n".join(texts)
        at += 1


def test_setup_prints_each_step_in_order_with_its_time():
    r = run_setup("--dry-run", "--browser")
    assert r.returncode == 0, r.stderr
    rows = steps(r.stdout)
    secs = [s for s, _ in rows if s >= 0]
    assert secs == sorted(secs), "the seconds go backwards"
    expect_in_order(rows, [
        r"dry run: nothing is installed$",
        r"upgrading pip$",
        r"would run: \S+ -m pip install -q --upgrade pip$",
        r"(torch already installed: \d+\.\d+|installing torch \(CPU build)",
        r"installing NELS and its dependencies \(",
        r"would run: \S+ -m pip install (-q )?-e \.\[dev\]$",
        r"(chromium already installed|installing chromium \(apt\))$",
        r"done \(dry run\): nels \d+\.\d+",
    ])
    assert sys.executable in r.stdout  # the Python it was given ($PYTHON) is the one it would install into


def test_without_browser_chromium_is_left_alone():
    r = run_setup("--dry-run")
    assert r.returncode == 0, r.stderr
    texts = [t for _, t in steps(r.stdout)]
    assert not any("chromium" in t or "apt-get" in t for t in texts), texts
    assert texts[-1].startswith("done (dry run): ")


def test_an_unknown_option_is_refused_before_anything_runs():
    r = run_setup("--brwoser")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown option '--brwoser'" in r.stderr and "--browser" in r.stderr
