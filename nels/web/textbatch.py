"""Micro-batching of the text encoder for concurrent searches.

On one CPU core MiniLM costs 11 ms for one short query and 3.3 ms per query in a batch of 8 (measured:
bench/RESULTS.md, website section). Under load many different text queries miss the answer cache at
once; encoding them one by one in the search threads is what bounds the server. `TextBatcher.prepare`
hands the query to one encoder thread that encodes everything waiting as one batch ("natural batching":
no timer, a query arriving at an idle server is encoded at once, the ones arriving meanwhile wait for the
next batch). The embeddings land in the shared `TextEncoder` cache, where the search that follows finds
them, so the search code itself is unchanged.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class TextBatcher:
    """Coalesce the encodings of concurrent text queries into batches of at most `max_batch`.

    encoder : a `nels.encoders.text.TextEncoder` (normally the process's shared one)
    max_batch : the largest batch; past ~16 the cost per query stops falling and the wait grows
    """

    def __init__(self, encoder, max_batch: int = 16):
        self.encoder = encoder
        self.max_batch = max_batch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="nels-text")
        self.pending: dict[str, asyncio.Future] = {}
        self._drainer: asyncio.Task | None = None
        self.batches = 0  # how many model calls, and how many texts went through them (for tests, stats)
        self.texts = 0

    async def prepare(self, text: str) -> None:
        """Return once `text`'s embedding is in the encoder's cache (or encoding it failed: the search
        that follows then encodes it itself and reports the error in its own words)."""
        if self.encoder.has(text):
            return
        fut = self.pending.get(text)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.pending[text] = fut
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.create_task(self._drain())
        await asyncio.shield(fut)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch = list(self.pending)[: self.max_batch]
            futs = [self.pending.pop(t) for t in batch]
            try:
                await loop.run_in_executor(self.pool, self.encoder.encode, batch)
                self.batches += 1
                self.texts += len(batch)
            except Exception:  # noqa: BLE001 - the search re-encodes and raises a clear error itself
                log.exception("batched text encoding failed; the searches will encode on their own")
            for f in futs:
                if not f.done():
                    f.set_result(None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
