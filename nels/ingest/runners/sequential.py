"""The local runner: every task in this process, one after the other (decoding and the model already use
the cores they are given)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from nels.ingest.runners import Builder, register_runner


class SequentialRunner:
    name = "local"

    def __init__(self, **_options):
        pass

    def run(self, tasks: Iterable[Any], build: Builder) -> Iterator[Any]:
        fn = build()
        for t in tasks:
            yield fn(t)


register_runner("local", SequentialRunner)
