"""Vector indexes, one per embedding space, behind the `VectorStore` seam.

A store holds one space's vectors keyed by segment id and answers inner-product k-NN over them. Every
store is a cache of the catalogue's `vectors` table (`nels.store.catalogue`, the source of truth): `sync`
adds what the table has and the store lacks, and rebuilds when they disagree in any other way (after a
crash, removals the store did not see, a new model). Backends are registered by name in `STORES`, and
`open_store(config.VECTOR_STORE.get(), path, dim, **options)` opens one: a new backend is one module with
a class that has the `VectorStore` methods plus one `register_store(name, cls)` line. `LanceStore` ("lance",
`nels/store/lance.py`) keeps each space in a LanceDB table, on a local disk or on object storage.

`FaissStore` ("faiss", the default) is exact (inner product over every vector) below `hnsw_threshold`
(50k) vectors and HNSW above it: exact search costs ~15 ms per query at 100k and ~110 ms at 1M on one
core, HNSW under 1 ms with recall@10 0.93 at 1M (bench/RESULTS.md). HNSW cannot delete in place, so a
removal there rebuilds the graph without the removed vectors: it costs a full HNSW build (475 s for 1M
vectors on a busy machine, bench/RESULTS.md).

Concurrency: searches run in parallel with each other and with rebuilds. Whatever replaces the index
(`remove`, `sync`, `build`, `load`, an `add` that crosses `hnsw_threshold`) builds a new index and swaps
it in, so searches in flight finish on the old one; only a plain `add` changes the index in place, and
it waits for the searches in flight (and holds new ones) while it does.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from nels.config import HNSW_EF_SEARCH, HNSW_M, HNSW_THRESHOLD
from nels.errors import LibraryError, disk_error


class VectorStore(Protocol):
    """One space's vectors keyed by segment id (int64), searched by inner product."""

    dim: int

    @classmethod
    def open(cls, path: str | os.PathLike | None, dim: int, **options) -> VectorStore:
        """The store persisted at `path` (the backend adds its own file suffix), or an empty one when there
        is none or it cannot be used (unreadable, another dim): `sync` refills it from the catalogue.
        `path=None`: in memory only. `options` are backend settings; a store ignores those it does not
        know, so the library passes one set of options whatever the backend."""
        ...

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors (n, dim) under `ids` (n,), ids not already in the store."""
        ...

    def remove(self, ids: np.ndarray) -> None:
        """Remove these ids; ids not in the store are ignored."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1 (score -inf)."""
        ...

    def count(self) -> int:
        """How many vectors the store holds (also `len(store)`)."""
        ...

    def __len__(self) -> int: ...

    def flush(self) -> None:
        """Persist to `path` (nothing when it is None), atomically: a crash leaves the old or the new state."""
        ...

    def sync(self, catalogue, space: str, full: bool = True) -> bool:
        """Make the store hold exactly `catalogue`'s vectors of `space`; True if it changed. full=False
        may check only for new vectors (cheap enough for every search); full=True also catches removals."""
        ...


STORE_METHODS = ("open", "add", "remove", "search", "count", "__len__", "flush", "sync")


def _faiss():
    import faiss

    return faiss


@contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for what this thread runs inside (None: unchanged). OpenMP keeps the setting per
    thread, and it is restored after, so an index build later on the same thread keeps its threads."""
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers (it is never starved)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


REBUILD_CHUNK = 65_536  # vectors copied at a time when an index is rebuilt from itself
# FAISS spreads a search's queries over OpenMP threads. A query's few vectors (the windows of one audio query)
# gain nothing from that and lose much: at 100k vectors on 2 busy cores, 5 vectors x k=200 took 4.6-22 ms of
# wall time on 2 threads against 0.4-1 ms on one (HNSW, 128-d; 1024-d: 53 vs 18 ms), the threads spinning
# while they wait for a core. Below this many vectors a search runs on its calling thread; results are the
# same (each vector is searched alone either way). Larger batches (evaluations) keep FAISS's threads.
ONE_THREAD_BELOW = 32


class FaissStore:
    """An inner-product FAISS index keyed by segment id (an IndexIDMap2 over IndexFlatIP or IndexHNSWFlat),
    persisted to `path` (<space>.faiss) and a .json sidecar that vouches for it."""

    suffix = ".faiss"

    def __init__(self, dim: int, path: Path | None = None, hnsw_threshold: int = HNSW_THRESHOLD,
                 hnsw_m: int = HNSW_M, ef_search: int = HNSW_EF_SEARCH):
        self.dim, self.path = int(dim), (Path(path) if path is not None else None)
        self.hnsw_threshold, self.hnsw_m, self.ef_search = hnsw_threshold, hnsw_m, ef_search
        self.max_id = -1  # the largest id in the index (-1: empty)
        self.model = None  # the catalogue's model of the vectors, as of the last sync
        self._lock = threading.RLock()  # one writer at a time (add, remove, sync, build, load, flush)
        self._rw = _ReadWriteLock()  # searches (read) against an `add` changing the index in place (write)
        self.index = self._new_index(0)

    @classmethod
    def open(cls, path: str | os.PathLike | None, dim: int, *, hnsw_threshold: int = HNSW_THRESHOLD,
             hnsw_m: int = HNSW_M, ef_search: int = HNSW_EF_SEARCH, **_other_backends) -> FaissStore:
        """`path` + ".faiss" (unless it ends so already) loaded, or an empty store (see `VectorStore.open`)."""
        if path is not None:
            path = Path(path)
            if path.suffix != cls.suffix:
                path = path.with_name(path.name + cls.suffix)
        store = cls(dim, path, hnsw_threshold, hnsw_m, ef_search)
        store.load()
        return store

    # -- construction -------------------------------------------------------------------------
    def _new_index(self, n: int):
        """An empty index of the kind that suits `n` vectors."""
        faiss = _faiss()
        if n >= self.hnsw_threshold:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 64
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @staticmethod
    def _kind_of(index) -> str:
        faiss = _faiss()
        return "hnsw" if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) else "exact"

    @property
    def kind(self) -> str:
        """"exact" or "hnsw"."""
        return self._kind_of(self.index)

    def _too_small_a_kind(self, n: int) -> bool:
        """Exact search over `n` vectors when it should be HNSW."""
        return n >= self.hnsw_threshold and self.kind == "exact"

    def _swap(self, index, max_id: int) -> None:
        """Install a new index (the caller holds self._lock); searches in flight keep the old one."""
        if self._kind_of(index) == "hnsw":
            _faiss().downcast_index(index.index).hnsw.efSearch = self.ef_search
        self.index, self.max_id = index, int(max_id)

    def _ids(self, index=None) -> np.ndarray:
        """The ids in the index, in storage order."""
        return _faiss().vector_to_array((self.index if index is None else index).id_map).astype(np.int64)

    def _rebuilt(self, keep: np.ndarray | None = None, ids: np.ndarray | None = None,
                 vecs: np.ndarray | None = None):
        """A new index (of the kind that suits its size) with the stored vectors where `keep` (all when
        None) plus `ids`/`vecs`; the current index is only read."""
        old = self.index
        stored = self._ids(old)
        if keep is None:
            keep = np.ones(len(stored), dtype=bool)
        extra = 0 if ids is None else len(ids)
        index = self._new_index(int(keep.sum()) + extra)
        inner = old.index
        for start in range(0, len(stored), REBUILD_CHUNK):
            stop = min(start + REBUILD_CHUNK, len(stored))
            m = keep[start:stop]
            if m.any():
                chunk = inner.reconstruct_n(start, stop - start)
                index.add_with_ids(np.ascontiguousarray(chunk[m]), np.ascontiguousarray(stored[start:stop][m]))
        if extra:
            index.add_with_ids(vecs, ids)
        return index

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Replace the contents with exactly these vectors (choosing exact or HNSW by size)."""
        ids, vecs = self._check(ids, vecs)
        index = self._new_index(len(ids))
        if len(ids):
            index.add_with_ids(vecs, ids)
        with self._lock:
            self._swap(index, ids.max() if len(ids) else -1)

    def _check(self, ids, vecs) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.size != len(ids) * self.dim:
            raise ValueError(f"{len(ids)} ids but vectors of shape {vecs.shape} (dim {self.dim})")
        return ids, np.ascontiguousarray(vecs.reshape(len(ids), self.dim))

    # -- VectorStore ----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        ids, vecs = self._check(ids, vecs)
        if not len(ids):
            return
        with self._lock:
            new_max = max(self.max_id, int(ids.max()))
            if self._too_small_a_kind(len(self) + len(ids)):  # crossing hnsw_threshold: rebuild as HNSW
                self._swap(self._rebuilt(ids=ids, vecs=vecs), new_max)
                return
            with self._rw.write():  # in place: wait for the searches reading this index
                self.index.add_with_ids(vecs, ids)
                self.max_id = new_max

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not ids.size:
            return
        with self._lock:
            stored = self._ids()
            gone = np.isin(stored, ids)
            if not gone.any():
                return
            left = stored[~gone]
            new_max = int(left.max()) if left.size else -1
            if self.kind == "exact":
                index = _faiss().clone_index(self.index)  # searches in flight keep the old one
                index.remove_ids(ids)
            else:  # HNSW cannot delete: rebuild without them
                index = self._rebuilt(keep=~gone)
            self._swap(index, new_max)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(int(k), 0)
        if not len(q) or not k:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        with self._rw.read(), _omp_threads(1 if len(q) < ONE_THREAD_BELOW else None):
            scores, ids = self.index.search(q, k)  # FAISS search is read-only: searches run in parallel
        scores[ids < 0] = -np.inf
        return scores, ids

    def count(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.count()

    # -- persistence ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write atomically (temp file + rename), index first, then the sidecar that vouches for it."""
        if self.path is None:
            return
        faiss = _faiss()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            sidecar = self.path.with_suffix(".json")
            tmpj = sidecar.with_name(sidecar.name + ".tmp")
            try:
                faiss.write_index(self.index, str(tmp))
                os.replace(tmp, self.path)
                side = {"count": len(self), "max_id": self.max_id, "dim": self.dim, "model": self.model}
                tmpj.write_text(json.dumps(side))
                os.replace(tmpj, sidecar)
            except (OSError, RuntimeError) as exc:  # faiss says RuntimeError for a failed write (a full disk)
                tmp.unlink(missing_ok=True)
                tmpj.unlink(missing_ok=True)
                err = exc
                if isinstance(exc, RuntimeError):  # "... write error in F: 1048531 != 5120000 (No space left on device)"
                    msg = str(exc).strip().splitlines()[-1][-300:]
                    full = any(t in msg for t in ("No space", "too large", "quota")) \
                        or shutil.disk_usage(self.path.parent).free < (1 << 20)
                    err = OSError(errno.ENOSPC if full else errno.EIO, msg)
                raise disk_error(err, f"cannot write the vector index {self.path.name} (it is a cache: the"
                                      f" catalogue keeps every vector, and the next open rebuilds it)") from exc

    def save(self) -> None:
        """`flush` under its old name."""
        self.flush()

    def load(self) -> bool:
        """Read the index from disk; False (and the store unchanged) when it is missing, unreadable, of
        another dim or not the one its sidecar vouches for."""
        if self.path is None or not self.path.exists():
            return False
        faiss = _faiss()
        try:
            side = json.loads(self.path.with_suffix(".json").read_text())
            index = faiss.read_index(str(self.path))
        except Exception:
            return False
        if (not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim
                or index.ntotal != side.get("count") or not isinstance(side.get("max_id"), int)):
            return False
        with self._lock:
            self._swap(index, side["max_id"])
            self.model = side.get("model")
        return True

    # -- catalogue sync -----------------------------------------------------------------------------
    def sync(self, catalogue, space: str, full: bool = True) -> bool:
        """Make this index hold exactly the catalogue's vectors for `space`. True if it changed.

        full=False only checks for new vectors (the newest id, an O(log n) look-up: cheap enough for
        every search); the full check counts every row (12 ms at 100k) and also catches removals and a
        new model."""
        if not full and catalogue.newest_vector_id(space) == self.max_id and not self._too_small_a_kind(len(self)):
            return False
        count, max_id, model = catalogue.vector_summary(space)
        with self._lock:
            n = len(self)
            if count == n and max_id == self.max_id and model == self.model and not self._too_small_a_kind(count):
                return False
            # never mutate the live index: concurrent searches may be reading it; build, then swap
            if (model == self.model and not self._too_small_a_kind(count)
                    and catalogue.count_vectors_upto(space, self.max_id) == n):
                index, top = _faiss().clone_index(self.index), self.max_id  # only new vectors: add them
            else:  # removals, a crash or a new model left them apart: rebuild
                index, top = self._new_index(count), -1
            for ids, vecs in catalogue.iter_vectors(space, after_id=top):
                if vecs.shape[-1] != self.dim:
                    raise LibraryError(f"the catalogue's '{space}' vectors have dim {vecs.shape[-1]}, "
                                       f"its index {self.dim}")
                index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(ids))
                top = max(top, int(ids.max()))
            self._swap(index, top)
            self.model = model
        return True


# -- the registry ---------------------------------------------------------------------------------------
STORES: dict[str, type] = {"faiss": FaissStore}


def register_store(name: str, cls: type) -> None:
    """Make `cls` (a class with the `VectorStore` methods) the store called `name` (NELS_VECTOR_STORE)."""
    missing = [m for m in STORE_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(f"{cls.__name__} is not a VectorStore: it lacks {', '.join(missing)}")
    STORES[name] = cls


def open_store(name: str, path: str | os.PathLike | None, dim: int, **options) -> VectorStore:
    """The `name` store at `path` (without the backend's suffix: e.g. <library>/indexes/<space>), loaded
    or empty; see `VectorStore.open`."""
    cls = STORES.get(name)
    if cls is None:
        raise LibraryError(f"unknown vector store '{name}' (NELS_VECTOR_STORE); known: {', '.join(sorted(STORES))}")
    return cls.open(path, dim, **options)


def _register_builtin() -> None:
    from nels.store.lance import LanceStore  # imports lancedb only when a lance store is opened

    register_store("lance", LanceStore)


_register_builtin()
