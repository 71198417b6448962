"""The Ray runner: the mapper in a pool of Ray actors spread over a Ray cluster (one machine or many); the
driver (this process) reads the items, claims each one just before handing it out, and writes every
result itself, so the catalogue keeps a single writer.

    nels ingest DIR --runner ray                      $RAY_ADDRESS, else the cluster `ray start` runs on
                                                      this machine, else a Ray instance started for the command
    nels ingest DIR --runner ray --ray-address HOST:6379
    nels ingest DIR --runner ray --ray-address local  always a Ray instance of its own

Each actor builds its function (its encoders) once from the picklable builder, with `cpus_per_worker`
Ray CPUs and as many torch threads. Tasks go `batch` to a call (Ray's per-call cost amortised) to the actor
with the fewest unfinished calls (at most `per_worker` queued on each, so an actor never waits for the
driver); a task is read only when an actor can take it and at most `max_in_flight` are out, so memory stays
flat on a crawl of any length; results come back in task order, as every runner's do.

Ray actors rather than Ray Data: the pipeline's reader is a lazy generator that claims an item in the
catalogue (and waits on the rate limit) only when a worker is ready for it, and stops at `--max-items`;
Ray Data would read the items ahead of the workers, claiming what may never be processed.

A worker process that dies (killed, out of memory, its node lost) is restarted by Ray, which runs its
unfinished tasks again (`max_restarts`, `max_task_retries`): the mapper writes nothing, so running a
task twice stores nothing twice. A driver that dies leaves its claims to the next run (`clean_stale`),
which resumes from the catalogue.

Ray is an optional dependency (`pip install "nels[scale]"`): nothing imports it unless this runner is
asked for.
"""
from __future__ import annotations

import os
from collections import deque
from itertools import islice
from typing import Any, Iterable, Iterator

from nels.errors import NelsError
from nels.ingest.runners import Builder, register_runner


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise NelsError('the ray runner needs Ray: pip install "ray[data]" (or "nels[scale]")') from exc
    return ray


class _Worker:
    """A Ray actor: builds the mapper once, then applies it to each task it is given."""

    def __init__(self, build: Builder, threads: int):
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        self._fn = build()

    def where(self) -> tuple[int, str]:
        """(this worker's process id, the id of the Ray node it runs on)."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def apply(self, tasks: list) -> list:
        return [self._fn(t) for t in tasks]


class RayRunner:
    """Parameters:
    address : the Ray cluster ("HOST:PORT", "auto", "local", "ray://HOST:10001"); None: $RAY_ADDRESS, else
        the cluster `ray start` runs on this machine, else a Ray instance started for this process ("local":
        always that). Ignored when Ray is already initialised in this process.
    workers : actors (None: the cluster's CPUs / cpus_per_worker, at least 1).
    cpus_per_worker : Ray CPUs each actor reserves (and its torch threads).
    per_worker : calls queued on one actor at a time.
    batch : tasks per call: Ray costs a few ms of CPU per call (driver and worker), 30 % of the encoding of a
        5-s clip; 4 tasks a call make it a few %.
    max_in_flight : tasks handed out and not yet yielded (None: 4 x workers x batch).
    max_restarts : restarts of a worker process that died (each restart runs its unfinished tasks again).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                 per_worker: int = 2, batch: int = 4, max_in_flight: int | None = None, max_restarts: int = 3,
                 processes: int | None = None, **_options):
        self.address = address
        self.workers = workers or processes  # `--processes N` reads as N workers here too
        self.cpus_per_worker = cpus_per_worker
        self.per_worker = max(1, per_worker)
        self.batch = max(1, batch)
        self.max_in_flight = max_in_flight
        self.max_restarts = max_restarts
        self.worker_pids: list[int] = []  # the actors' processes and nodes (of the latest run)
        self.worker_nodes: list[str] = []

    def _connect(self):
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="WARNING",
                     log_to_driver=True, configure_logging=True)
        return ray

    def run(self, tasks: Iterable[Any], build: Builder) -> Iterator[Any]:
        ray = self._connect()
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_worker))
        threads = max(1, int(self.cpus_per_worker))
        actor_cls = ray.remote(_Worker).options(num_cpus=self.cpus_per_worker, max_restarts=self.max_restarts,
                                                max_task_retries=self.max_restarts)
        actors = [actor_cls.remote(build, threads) for _ in range(n)]
        try:
            try:
                where = ray.get([a.where.remote() for a in actors])
            except ray.exceptions.RayActorError as exc:  # the builder failed (a missing model, say)
                raise NelsError(f"the Ray workers could not start: {_cause(exc)}") from None
            self.worker_pids, self.worker_nodes = [p for p, _ in where], [n for _, n in where]
            yield from self._stream(ray, actors, tasks)
        finally:
            for a in actors:
                ray.kill(a)

    def _stream(self, ray, actors: list, tasks: Iterable[Any]) -> Iterator[Any]:
        cap = max(1, (self.max_in_flight or 4 * len(actors) * self.batch) // self.batch)  # in calls
        order: deque = deque()  # object refs of the calls, in task order
        owner: dict = {}  # unfinished call -> actor index
        load = [0] * len(actors)  # unfinished calls per actor

        def settle(block: bool) -> None:
            """Note the tasks that finished (waiting for one if `block`)."""
            if not owner:
                return
            done, _ = ray.wait(list(owner), num_returns=1 if block else len(owner), timeout=None if block else 0)
            for ref in done:
                load[owner.pop(ref)] -= 1

        def ready_heads() -> Iterator[Any]:
            while order and order[0] not in owner:
                yield from self._result(ray, order.popleft())

        it = iter(tasks)
        while True:
            while min(load) >= self.per_worker or len(order) >= cap:
                if order and order[0] not in owner:
                    yield from ready_heads()
                    continue
                settle(block=True)
            chunk = list(islice(it, self.batch))  # read only now that an actor can take them
            if not chunk:
                break
            i = min(range(len(actors)), key=load.__getitem__)
            ref = actors[i].apply.remote(chunk)
            owner[ref] = i
            load[i] += 1
            order.append(ref)
            settle(block=False)
            yield from ready_heads()
        while order:
            settle(block=order[0] in owner)
            yield from ready_heads()

    @staticmethod
    def _result(ray, ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise NelsError(f"a Ray worker died more often than it may be restarted: {_cause(exc)}") from None
        except ray.exceptions.RayTaskError as exc:  # the mapper's own error, as the local runner would raise it
            raise exc.as_instanceof_cause() from None


def _cause(exc: BaseException) -> str:
    """The last line of a Ray error (the worker's own exception, after Ray's account of where it happened)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


register_runner("ray", RayRunner)
