"""Runners: where the mapper runs. A runner applies a function to every task and yields the results in
task order; the function is made by a *builder* once per worker, so each worker builds its own encoder
(models are never pickled). The pipeline (`nels.ingest.runner`) and every stage stay the same whichever
runner is chosen:

    local   one process (the default)                          nels/ingest/runners/sequential.py
    pool    a process per core on this machine                 nels/ingest/runners/pool.py
    ray     Ray actors on a Ray cluster (optional: ray[data])  nels/ingest/runners/ray.py

A new runner (Ray, say) is one new file plus one `register_runner` line; it must pass
tests/test_runners.py (same input -> identical library).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Protocol

from nels.errors import NelsError

Builder = Callable[[], Callable[[Any], Any]]  # picklable; called once per worker


class Runner(Protocol):
    name: str

    def run(self, tasks: Iterable[Any], build: Builder) -> Iterator[Any]:
        """`build()`'s function applied to every task; results in task order."""
        ...


_RUNNERS: dict[str, Callable[..., Runner]] = {}


def register_runner(name: str, factory: Callable[..., Runner]) -> None:
    _RUNNERS[name] = factory


def runner_names() -> list[str]:
    _load_builtin()
    return sorted(_RUNNERS)


def _load_builtin() -> None:
    from nels.ingest.runners import pool, ray, sequential  # noqa: F401 - each registers itself on import


def make_runner(name: str | None = None, **options) -> Runner:
    """A runner by name (None: $NELS_RUNNER, else 'local')."""
    from nels import config

    _load_builtin()
    name = name or config.RUNNER.get()
    if name not in _RUNNERS:
        raise NelsError(f"unknown runner {name!r} (known: {', '.join(sorted(_RUNNERS))})")
    return _RUNNERS[name](**options)
