"""Conformance tests of the VectorStore seam (nels.store.vectors), run over every store and configuration.

A new backend registers itself in STORES and adds its configurations to CONFIGS; test_every_store_is_tested
fails until it does."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from nels.errors import LibraryError
from nels.store import vectors
from nels.store.catalogue import Catalogue
from nels.store.vectors import STORES, FaissStore, open_store, register_store

DIM = 64
N = 2000  # the recall test
M = 800  # the others

# (store name, options, the recall@1 of a vector searched for itself, the FAISS index kind it must be)
CONFIGS = [
    pytest.param(("faiss", {"hnsw_threshold": 10 ** 9}, 1.0, "exact"), id="faiss-exact"),
    pytest.param(("faiss", {"hnsw_threshold": 0}, 0.95, "hnsw"), id="faiss-hnsw"),
    pytest.param(("lance", {"hnsw_threshold": 10 ** 9}, 1.0, "exact"), id="lance-exact"),
    # an index from the first 256 vectors on (both kinds), rows appended after it searched beside it
    pytest.param(("lance", {"hnsw_threshold": 0, "lance_index": "IVF_HNSW_SQ"}, 0.95, None), id="lance-hnsw-sq"),
    pytest.param(("lance", {"hnsw_threshold": 0, "lance_index": "IVF_PQ"}, 0.95, None), id="lance-pq"),
]
BUILTIN_STORES = dict(STORES)


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def ids_for(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 3 + 7  # not positions: a store mixing the two fails


@pytest.fixture(params=CONFIGS)
def cfg(request):
    return request.param


def opened(cfg, path, dim: int = DIM):
    name, options, _, kind = cfg
    store = open_store(name, path, dim, **options)
    if kind is not None:
        assert store.kind == kind
    return store


def self_recall(store, ids: np.ndarray, vecs: np.ndarray) -> float:
    _, found = store.search(vecs, 1)
    return float(np.mean(found[:, 0] == ids))


def test_every_store_is_tested():
    assert set(BUILTIN_STORES) <= {p.values[0][0] for p in CONFIGS}


def test_add_then_search_finds_each_vector(cfg, tmp_path):
    store = opened(cfg, tmp_path / "s")
    ids, vecs = ids_for(N), unit(N)
    for part in np.array_split(np.arange(N), 4):
        store.add(ids[part], vecs[part])
    assert store.count() == len(store) == N
    scores, found = store.search(vecs, 5)
    assert scores.shape == found.shape == (N, 5)
    assert set(found.ravel().tolist()) <= set(ids.tolist())
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    hit = found[:, 0] == ids
    assert hit.mean() >= cfg[2]
    assert np.allclose(scores[hit, 0], 1.0, atol=1e-4)


def test_search_pads_missing_results(cfg, tmp_path):
    store = opened(cfg, tmp_path / "s")
    q = unit(2, seed=1)
    scores, found = store.search(q, 4)  # empty
    assert found.shape == (2, 4) and np.all(found == -1) and np.all(np.isneginf(scores))
    store.add(ids_for(3), unit(3))
    scores, found = store.search(q, 5)
    assert found.shape == scores.shape == (2, 5)
    for row, srow in zip(found, scores):
        assert sorted(row[:3].tolist()) == ids_for(3).tolist() and np.all(row[3:] == -1)
        assert np.all(np.isfinite(srow[:3])) and np.all(np.isneginf(srow[3:]))
    assert store.search(q, 0)[1].shape == (2, 0)


def test_remove(cfg, tmp_path):
    store = opened(cfg, tmp_path / "s")
    ids, vecs = ids_for(M), unit(M)
    store.add(ids, vecs)
    gone = np.zeros(M, dtype=bool)
    gone[::4] = True
    store.remove(np.concatenate([ids[gone], [10 ** 9, 5]]))  # ids not in the store are ignored
    assert store.count() == M - gone.sum()
    _, found = store.search(vecs, 10)
    assert not set(found.ravel().tolist()) & set(ids[gone].tolist())
    assert self_recall(store, ids[~gone], vecs[~gone]) >= cfg[2]
    store.remove(ids[gone])  # again: nothing left to remove
    assert store.count() == M - gone.sum()
    store.remove(ids)
    assert store.count() == 0 and np.all(store.search(vecs[:3], 2)[1] == -1)
    store.add(ids[:10], vecs[:10])  # and it still takes vectors
    assert self_recall(store, ids[:10], vecs[:10]) == 1.0


def test_flush_and_reopen_give_the_same_answers(cfg, tmp_path):
    store = opened(cfg, tmp_path / "s")
    ids, vecs = ids_for(M), unit(M)
    store.add(ids, vecs)
    store.remove(ids[:100])
    store.flush()
    q = unit(50, seed=2)
    scores, found = store.search(q, 10)
    again = opened(cfg, tmp_path / "s")
    assert again.count() == M - 100
    s2, f2 = again.search(q, 10)
    assert np.array_equal(found, f2) and np.allclose(scores, s2, atol=1e-5)
    assert opened(cfg, tmp_path / "other").count() == 0  # nothing there: empty
    assert opened(cfg, tmp_path / "s", dim=DIM // 2).count() == 0  # another dim: empty, sync refills it


def test_concurrent_search_during_add_and_remove(cfg, tmp_path):
    store = opened(cfg, tmp_path / "s")
    ids, vecs = ids_for(M), unit(M)
    store.add(ids[:400], vecs[:400])
    done, errors, returned, searches = threading.Event(), [], set(), [0]

    def reader(seed):
        q = unit(8, seed=seed)
        try:
            while not done.is_set():
                _, found = store.search(q, 10)
                assert found.shape == (8, 10)
                returned.update(found.ravel().tolist())
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def writer():
        try:
            for part in np.array_split(np.arange(400, M), 8):
                store.add(ids[part], vecs[part])
            store.remove(ids[:200])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in (10, 11)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert searches[0] > 0
    assert returned - {-1} <= set(ids.tolist())
    assert store.count() == M - 200
    assert self_recall(store, ids[200:], vecs[200:]) >= cfg[2]


# -- sync with a real catalogue ------------------------------------------------------------------------------
def add_clip(cat: Catalogue, name: str, vecs: np.ndarray, model: str = "m1", space: str = "s") -> int:
    n = len(vecs)
    clip_id, added = cat.add_clip(name, f"media/{name}.wav", float(n), {"title": name}, np.arange(n, dtype=float),
                                  np.arange(n, dtype=float) + 1, {space: (model, vecs)}, None)
    assert added
    return clip_id


def catalogue_vectors(cat: Catalogue, space: str = "s") -> tuple[np.ndarray, np.ndarray]:
    parts = list(cat.iter_vectors(space))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_sync_follows_the_catalogue_through_removals(cfg, tmp_path):
    cat = Catalogue(tmp_path / "nels.db")
    vecs = unit(400, seed=3)
    clips = [add_clip(cat, f"c{i}", vecs[i * 100:(i + 1) * 100]) for i in range(4)]
    store = opened(cfg, tmp_path / "s")
    assert store.sync(cat, "s", full=False) and store.count() == 400
    assert not store.sync(cat, "s", full=True)  # nothing changed
    assert not store.sync(cat, "s", full=False)

    _, seg_ids = cat.remove_clip(clips[1])  # the store is not told: a full sync finds out and rebuilds
    assert store.sync(cat, "s", full=True) and store.count() == 300
    _, last = cat.remove_clip(clips[3])  # the newest: even the cheap check sees the newest id move
    assert store.sync(cat, "s", full=False) and store.count() == 200
    assert not store.sync(cat, "s", full=True)
    ids, left = catalogue_vectors(cat)
    _, found = store.search(vecs, 10)
    assert not set(found.ravel().tolist()) & set(seg_ids + last)
    assert self_recall(store, ids, left) >= cfg[2]

    # the library's way: the catalogue and the store both told; nothing left for sync to do
    _, seg_ids = cat.remove_clip(clips[2])
    store.remove(np.asarray(seg_ids))
    assert not store.sync(cat, "s", full=True)
    more = add_clip(cat, "c4", unit(50, seed=4))
    assert store.sync(cat, "s", full=False) and store.count() == 150
    assert self_recall(store, *catalogue_vectors(cat)) >= cfg[2]

    # a new model: same ids, same count, other vectors: rebuilt
    new = unit(150, seed=5)
    ids, _ = catalogue_vectors(cat)
    cat.replace_encodings(clips[0], {"s": ("m2", new[:100])}, None)
    cat.replace_encodings(more, {"s": ("m2", new[100:])}, None)
    assert store.sync(cat, "s", full=True)
    assert self_recall(store, ids, new) >= cfg[2]
    store.flush()
    assert not opened(cfg, tmp_path / "s").sync(cat, "s", full=True)  # the file holds the catalogue's state
    cat.close()


def test_sync_switches_exact_to_hnsw_at_the_threshold(tmp_path):
    cat = Catalogue(tmp_path / "nels.db")
    vecs = unit(300, seed=6)
    store = open_store("faiss", tmp_path / "s", DIM, hnsw_threshold=250)
    add_clip(cat, "a", vecs[:100])
    add_clip(cat, "b", vecs[100:200])
    assert store.sync(cat, "s", full=False) and store.kind == "exact" and store.count() == 200
    add_clip(cat, "c", vecs[200:])
    assert store.sync(cat, "s", full=False) and store.kind == "hnsw" and store.count() == 300
    assert not store.sync(cat, "s", full=True)
    ids, vs = catalogue_vectors(cat)
    assert self_recall(store, ids, vs) >= 0.95
    store.flush()
    # a file written exact by a library with a higher threshold is rebuilt as HNSW by one with a lower one
    low = open_store("faiss", tmp_path / "s", DIM, hnsw_threshold=10 ** 9)
    low.build(ids, vs)
    low.flush()
    assert low.kind == "exact"
    again = open_store("faiss", tmp_path / "s", DIM, hnsw_threshold=250)
    assert again.kind == "exact" and again.sync(cat, "s", full=False) and again.kind == "hnsw"
    cat.close()


# -- FAISS specifics -------------------------------------------------------------------------------------
def test_faiss_add_and_remove_choose_the_kind_by_size():
    store = FaissStore(DIM, hnsw_threshold=1000)
    ids, vecs = ids_for(1500), unit(1500)
    store.add(ids[:600], vecs[:600])
    assert store.kind == "exact"
    store.add(ids[600:], vecs[600:])  # crosses the threshold
    assert store.kind == "hnsw" and store.count() == 1500 and store.max_id == ids.max()
    assert self_recall(store, ids, vecs) >= 0.95
    store.remove(ids[-700:])  # HNSW removes by rebuilding; 800 left: exact
    assert store.kind == "exact" and store.count() == 800 and store.max_id == ids[799]
    assert self_recall(store, ids[:800], vecs[:800]) == 1.0


def test_faiss_hnsw_remove_swaps_in_a_new_index():
    store = FaissStore(DIM, hnsw_threshold=0)
    ids, vecs = ids_for(500), unit(500)
    store.add(ids, vecs)
    old = store.index
    store.remove(ids[:10])
    assert store.index is not old and old.ntotal == 500  # a search in flight on `old` is unaffected
    assert store.kind == "hnsw" and store.count() == 490


class WatchedIndex:
    """Wraps a FAISS index: slows `search` and `add_with_ids` down and records when they overlap."""

    def __init__(self, index):
        self.inner, self.lock, self.searching, self.adding, self.overlaps = index, threading.Lock(), 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _enter(self, mine: str, other: str):
        with self.lock:
            self.overlaps += bool(getattr(self, other))
            setattr(self, mine, getattr(self, mine) + 1)
        time.sleep(0.002)

    def _leave(self, mine: str):
        with self.lock:
            setattr(self, mine, getattr(self, mine) - 1)

    def search(self, q, k):
        self._enter("searching", "adding")
        try:
            return self.inner.search(q, k)
        finally:
            self._leave("searching")

    def add_with_ids(self, vecs, ids):
        self._enter("adding", "searching")
        try:
            return self.inner.add_with_ids(vecs, ids)
        finally:
            self._leave("adding")


def test_faiss_add_in_place_never_overlaps_a_search():
    store = FaissStore(DIM, hnsw_threshold=10 ** 9)
    ids, vecs = ids_for(400), unit(400)
    store.add(ids[:100], vecs[:100])
    store.index = watched = WatchedIndex(store.index)
    done, searches, progressed = threading.Event(), [0], threading.Condition()

    def reader():
        while not done.is_set():
            store.search(vecs[:4], 5)
            with progressed:
                searches[0] += 1
                progressed.notify_all()

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    for part in np.array_split(np.arange(100, 400), 30):
        with progressed:  # each add waits until a search has run since the last one (readiness, not a clock)
            seen = searches[0]
            progressed.wait_for(lambda: searches[0] > seen)
        store.add(ids[part], vecs[part])
    done.set()
    for t in readers:
        t.join()
    assert searches[0] >= 30 and store.count() == 400
    assert watched.overlaps == 0


def test_faiss_files_and_the_old_api(tmp_path):
    path = tmp_path / "indexes" / "clap.v2.faiss"
    store = FaissStore(DIM, path, 10 ** 9)  # how library.py makes it today
    assert not store.load()
    store.add(ids_for(20), unit(20))
    store.save()  # flush's old name
    assert path.exists() and (tmp_path / "indexes" / "clap.v2.json").exists()
    assert open_store("faiss", tmp_path / "indexes" / "clap.v2", DIM).count() == 20  # the suffix is added
    fresh = FaissStore(DIM, path, 10 ** 9)
    assert fresh.load() and fresh.count() == 20 and fresh.max_id == ids_for(20).max()
    path.write_bytes(b"garbage")
    assert not FaissStore(DIM, path).load()
    assert open_store("faiss", path, DIM).count() == 0
    with pytest.raises(ValueError):
        store.add(ids_for(3), unit(2))


# -- the registry -----------------------------------------------------------------------------------------
class BruteForceStore:
    """The least a store needs: numpy brute force, in memory."""

    def __init__(self, dim, path, **options):
        self.dim, self.path, self.options = dim, path, options
        self.ids, self.vecs = np.zeros(0, np.int64), np.zeros((0, dim), np.float32)

    @classmethod
    def open(cls, path, dim, **options):
        return cls(dim, path, **options)

    def add(self, ids, vecs):
        self.ids = np.concatenate([self.ids, ids])
        self.vecs = np.concatenate([self.vecs, vecs])

    def remove(self, ids):
        keep = ~np.isin(self.ids, ids)
        self.ids, self.vecs = self.ids[keep], self.vecs[keep]

    def search(self, queries, k):
        s = queries @ self.vecs.T
        order = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, order, 1), self.ids[order]

    def count(self):
        return len(self.ids)

    def __len__(self):
        return self.count()

    def flush(self):
        pass

    def sync(self, catalogue, space, full=True):
        return False


def test_a_registered_store_is_opened_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "STORES", dict(STORES))  # registrations end with the test
    register_store("brute", BruteForceStore)
    store = open_store("brute", tmp_path / "s", 8, hnsw_threshold=5)
    assert isinstance(store, BruteForceStore) and store.path == tmp_path / "s" and store.dim == 8
    assert store.options == {"hnsw_threshold": 5}
    assert isinstance(open_store("faiss", None, 8, some_other_backends_option=1), FaissStore)
    with pytest.raises(LibraryError, match="unknown vector store 'nope'.*brute, faiss"):
        open_store("nope", tmp_path / "s", 8)
    with pytest.raises(TypeError, match="lacks"):
        register_store("broken", type("Broken", (), {"add": lambda self, ids, vecs: None}))
    assert "broken" not in vectors.STORES
