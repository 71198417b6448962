"""Failpoints: named places in long steps where a test can hold the process, so that "killed in the middle of a
step" is tested at a known place instead of by racing a clock (the idea of FoundationDB's and TiKV's failpoints).

`NELS_FAILPOINTS="run.learn=hold:/tmp/x/held"` makes `hit("run.learn")` create `/tmp/x/held` and then block until
the process is killed. Unset (always, outside tests), `hit` returns at once.

Places: `run.learn` (the learning step of `nels run`, after its data are assembled, before training).
"""
from __future__ import annotations

import threading
from pathlib import Path

from nels.config import FAILPOINTS


def parse(spec: str) -> dict[str, str]:
    """`name=action,name=action` -> {name: action}. A malformed entry is a ValueError naming it."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, action = part.partition("=")
        if not sep or not name or not action.startswith("hold:") or len(action) <= len("hold:"):
            raise ValueError(f"NELS_FAILPOINTS entry {part!r}: expected name=hold:FILE")
        out[name] = action
    return out


def hit(name: str) -> None:
    """Return at once unless NELS_FAILPOINTS names `name`; then touch its FILE and hold here until killed."""
    spec = FAILPOINTS.get()
    if not spec:
        return
    action = parse(spec).get(name)
    if action is None:
        return
    Path(action[len("hold:"):]).touch()
    threading.Event().wait()  # until the process is killed
