"""Lance specifics beyond the conformance suite: several processes syncing one table (as `nels serve --workers N`
and concurrent ingests do) never duplicate a vector; the index appears at the threshold and follows appends;
flush compacts small fragments."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("lancedb")

from nels.store.catalogue import Catalogue  # noqa: E402
from nels.store.lance import LanceStore  # noqa: E402

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_clip(cat: Catalogue, name: str, vecs: np.ndarray) -> None:
    n = len(vecs)
    cat.add_clip(name, f"media/{name}.wav", float(n), {"title": name}, np.arange(n, dtype=float),
                 np.arange(n, dtype=float) + 1, {"s": ("m1", vecs)}, None)


def stored_ids(store: LanceStore) -> np.ndarray:
    return store.table.search(None).select(["id"]).limit(None).to_arrow().column("id").to_numpy()


def test_two_writers_syncing_one_table_store_each_vector_once(tmp_path):
    cat = Catalogue(tmp_path / "nels.db")
    add_clip(cat, "a", unit(50, 1))
    first = LanceStore.open(tmp_path / "indexes" / "s", DIM, hnsw_threshold=10 ** 9)
    assert first.sync(cat, "s")
    second = LanceStore.open(tmp_path / "indexes" / "s", DIM, hnsw_threshold=10 ** 9)  # another process's view
    assert second.count() == 50 and second.max_id == first.max_id and not second.sync(cat, "s")
    for i in range(4):  # new clips, then both sync at once, as two server workers do after an ingest
        add_clip(cat, f"b{i}", unit(30, 10 + i))
        barrier, errors = threading.Barrier(2), []

        def run(store):
            try:
                barrier.wait()
                store.sync(cat, "s", full=False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
    fresh = LanceStore.open(tmp_path / "indexes" / "s", DIM)
    ids = stored_ids(fresh)
    assert len(ids) == len(set(ids.tolist())) == 50 + 4 * 30 == cat.vector_summary("s")[0]
    assert not fresh.sync(cat, "s", full=True)  # it holds exactly the catalogue's vectors
    cat.close()


def test_the_index_is_built_at_the_threshold_and_follows_appends_and_deletes(tmp_path):
    store = LanceStore.open(tmp_path / "s", DIM, hnsw_threshold=300)
    vecs = unit(700, 3)
    ids = np.arange(700, dtype=np.int64) * 2
    store.add(ids[:200], vecs[:200])
    assert store.kind == "exact"
    store.add(ids[200:400], vecs[200:400])  # crosses 300: the index is trained on all 400
    assert store.kind == "ivf_hnsw_sq" and store.trained_rows == 400
    store.add(ids[400:420], vecs[400:420])  # 5 %: searched beside the index, not merged yet
    assert store._index_rows() == (400, 20)
    store.add(ids[420:500], vecs[420:500])  # 25 %: merged into the index (no retraining)
    assert store._index_rows()[1] == 0 and store.trained_rows == 400
    store.add(ids[500:], vecs[500:])  # 700 rows < 4 x 400: merged, not retrained
    assert store.trained_rows == 400 and store.count() == 700
    _, found = store.search(vecs, 1)
    assert np.mean(found[:, 0] == ids) >= 0.95
    store.remove(ids[::2])
    _, found = store.search(vecs[::2], 5)
    assert not set(found.ravel().tolist()) & set(ids[::2].tolist())
    assert store.count() == 350


def test_flush_compacts_small_appends(tmp_path):
    store = LanceStore.open(tmp_path / "s", DIM, hnsw_threshold=10 ** 9)
    vecs = unit(400, 4)
    for i in range(20):  # a clip at a time, as syncs during an ingest append them
        store.add(np.arange(i * 20, (i + 1) * 20), vecs[i * 20:(i + 1) * 20])
    assert store.table.stats()["fragment_stats"]["num_fragments"] == 20
    store.remove(np.arange(0, 400, 7))
    store.flush()
    assert store.table.stats()["fragment_stats"]["num_fragments"] == 1
    again = LanceStore.open(tmp_path / "s", DIM)
    assert again.count() == 400 - len(range(0, 400, 7)) and again.max_id == 398
    _, found = again.search(vecs[1:4], 1)
    assert found[:, 0].tolist() == [1, 2, 3]
