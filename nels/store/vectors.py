"""Vector indexes, one per embedding space, behind the VectorStore seam.

`FaissStore` is exact (inner product over every vector) below `hnsw_threshold` (50k) vectors and
HNSW above it: exact search costs ~15 ms per query at 100k and ~110 ms at 1M on one core, HNSW
under 1 ms with recall@10 0.93 at 1M (bench/RESULTS.md). Ids are segment ids. The store is a
cache of the catalogue's `vectors` table: `sync` adds what the table has and the file lacks, and
rebuilds when they disagree in any other way (after a crash, a removal under HNSW, a new model).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

import numpy as np


class VectorStore(Protocol):
    dim: int

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k); missing results have id -1."""
        ...

    def __len__(self) -> int: ...


def _faiss():
    import faiss

    return faiss


class FaissStore:
    """An inner-product FAISS index keyed by segment id, persisted to `path` (+ a .json sidecar)."""

    def __init__(self, dim: int, path: Path | None = None, hnsw_threshold: int = 50_000,
                 hnsw_m: int = 32, ef_search: int = 128):
        self.dim, self.path = dim, path
        self.hnsw_threshold, self.hnsw_m, self.ef_search = hnsw_threshold, hnsw_m, ef_search
        self.max_id = -1
        self.model = None
        self._lock = threading.RLock()
        self.index = self._new_index(0)

    # -- construction -------------------------------------------------------------------------
    def _new_index(self, n: int):
        faiss = _faiss()
        if n >= self.hnsw_threshold:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 64
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @property
    def kind(self) -> str:
        return "hnsw" if "HNSW" in type(_faiss().downcast_index(self.index.index)).__name__ else "exact"

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Replace the contents with exactly these vectors (choosing exact or HNSW by size)."""
        with self._lock:
            self.index = self._new_index(len(ids))
            self.max_id = -1
            if len(ids):
                self.add(ids, vecs)

    # -- VectorStore ----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            self.index.add_with_ids(vecs, ids)
            if ids.size:
                self.max_id = max(self.max_id, int(ids.max()))

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            if self.kind == "hnsw":
                raise NotImplementedError("HNSW cannot delete in place; rebuild from the catalogue")
            index = _faiss().clone_index(self.index)  # searches in flight keep the old one
            index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
            self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        index = self.index  # searches run concurrently (FAISS search is read-only); `build` swaps the object
        if index.ntotal == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return index.search(q, min(k, index.ntotal))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # -- persistence ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write atomically (temp file + rename), index first, then the sidecar that vouches for it."""
        if self.path is None:
            return
        faiss = _faiss()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            tmp = self.path.with_suffix(".faiss.tmp")
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
            side = {"count": len(self), "max_id": self.max_id, "dim": self.dim, "model": self.model}
        tmpj = self.path.with_suffix(".json.tmp")
        tmpj.write_text(json.dumps(side))
        os.replace(tmpj, self.path.with_suffix(".json"))

    def load(self) -> bool:
        """Read the index from disk; False (and an empty index) when it is missing or unreadable."""
        if self.path is None or not self.path.exists():
            return False
        try:
            side = json.loads(self.path.with_suffix(".json").read_text())
            index = _faiss().read_index(str(self.path))
        except Exception:
            return False
        if index.d != self.dim or index.ntotal != side.get("count"):
            return False
        with self._lock:
            self.index, self.max_id, self.model = index, int(side["max_id"]), side.get("model")
            if self.kind == "hnsw":
                _faiss().downcast_index(self.index.index).hnsw.efSearch = self.ef_search
        return True

    # -- catalogue sync -----------------------------------------------------------------------------
    def sync(self, conn: sqlite3.Connection, space: str, full: bool = True) -> bool:
        """Make this index hold exactly the catalogue's vectors for `space`. True if it changed.

        full=False only checks for new vectors (the newest id, an O(log n) look-up: cheap enough for
        every search); the full check counts every row (12 ms at 100k) and also catches removals."""
        if not full:
            newest = conn.execute("SELECT MAX(segment_id) FROM vectors WHERE space=?", (space,)).fetchone()[0]
            if (newest if newest is not None else -1) == self.max_id and not (
                    self.kind == "exact" and len(self) >= self.hnsw_threshold):
                return False
        row = conn.execute("SELECT COUNT(*), COALESCE(MAX(segment_id), -1), MIN(model) FROM vectors WHERE space=?",
                           (space,)).fetchone()
        count, max_id, model = int(row[0]), int(row[1]), row[2]
        with self._lock:
            wrong_kind = self.kind == "exact" and count >= self.hnsw_threshold
            if count == len(self) and max_id == self.max_id and not wrong_kind:
                return False
            below = conn.execute("SELECT COUNT(*) FROM vectors WHERE space=? AND segment_id<=?",
                                 (space, self.max_id)).fetchone()[0]
            # never mutate the live index: concurrent searches may be reading it; build, then swap
            if below == len(self) and (count < self.hnsw_threshold or self.kind == "hnsw"):
                index, max_id = _faiss().clone_index(self.index), self.max_id
                cur = conn.execute("SELECT segment_id, vec FROM vectors WHERE space=? AND segment_id>? "
                                   "ORDER BY segment_id", (space, self.max_id))
            else:  # removals or a crash left them apart: rebuild
                index, max_id = self._new_index(count), -1
                cur = conn.execute("SELECT segment_id, vec FROM vectors WHERE space=? ORDER BY segment_id", (space,))
            while rows := cur.fetchmany(50_000):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
                index.add_with_ids(vecs, ids)
                max_id = max(max_id, int(ids.max()))
            if self.kind == "hnsw" or "HNSW" in type(_faiss().downcast_index(index.index)).__name__:
                _faiss().downcast_index(index.index).hnsw.efSearch = self.ef_search
            self.index, self.max_id, self.model = index, max_id, model
        return True
