"""The pool runner: a process per core on this machine (`processes`, default: the cores), each building
its own encoder once. Results come back in task order; at most `2 x processes` tasks are in flight, so
memory stays flat on long crawls. Processes are spawned (not forked: forking a process that has loaded
torch's thread pools can deadlock)."""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Iterator

from nels.ingest.runners import Builder, register_runner

_fn = None  # the worker's function, built once by _init


def _init(build: Builder, threads: int) -> None:
    global _fn
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    _fn = build()


def _call(task):
    return _fn(task)


class PoolRunner:
    name = "pool"

    def __init__(self, processes: int | None = None, threads_per_process: int = 1, **_options):
        self.processes = max(1, processes or os.cpu_count() or 1)
        self.threads = threads_per_process

    def run(self, tasks: Iterable[Any], build: Builder) -> Iterator[Any]:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_init,
                                 initargs=(build, self.threads)) as ex:
            inflight: deque = deque()
            for t in tasks:
                inflight.append(ex.submit(_call, t))
                if len(inflight) >= 2 * self.processes:
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()


register_runner("pool", PoolRunner)
