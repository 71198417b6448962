import numpy as np
import pytest

from nels.errors import LibraryError
from nels.store import catalogue as db
from nels.store.schema import MIGRATIONS, SCHEMA_VERSION
from nels.library import ClipRecord, Library
from nels.store.vectors import FaissStore


def _rec(tmp_path, h, n=3, dim=8, seed=0, space="s"):
    f = tmp_path / f"{h}.wav"
    f.write_bytes(b"x")
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return ClipRecord(h, f, float(n), {"source_uri": str(f), "title": h}, np.arange(n, dtype=float),
                      np.arange(n, dtype=float) + 1, {space: ("m1", v)},
                      ("m1", ["a", "b"], np.tile([[0.9, 0.1]], (n, 1))))


def test_add_search_remove_roundtrip(tmp_path):
    lib = Library(tmp_path / "lib")
    ids = [lib.add_clip(_rec(tmp_path, f"h{i}", seed=i)) for i in range(3)]
    assert lib.add_clip(_rec(tmp_path, "h0")) == ids[0]  # same content: the existing clip, no new rows
    st = lib.stats()
    assert st["clips"] == 3 and st["segments"] == 9 and st["spaces"]["s"]["vectors"] == 9
    vec = np.frombuffer(lib.conn.execute("SELECT vec FROM vectors LIMIT 1").fetchone()[0], np.float32)
    scores, found = lib.store("s").search(vec[None], 1)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    media = lib.path / lib.clip(ids[1])["media_path"]
    assert media.exists()
    assert lib.remove_clips([ids[1]]) == 1
    assert lib.stats()["segments"] == 6 and len(lib.store("s")) == 6
    assert not media.exists() and lib.clip(ids[1]) is None


def test_clip_write_is_all_or_nothing(tmp_path):
    lib = Library(tmp_path / "lib")
    rec = _rec(tmp_path, "bad")
    rec.vectors["s"] = ("m1", np.zeros((2, 8), np.float32))  # fewer vectors than segments: fails mid-write
    with pytest.raises(IndexError):
        lib.add_clip(rec)
    st = lib.stats()
    assert st["clips"] == 0 and st["segments"] == 0 and st["spaces"] == {}


def test_index_resyncs_after_crash_and_stale_files(tmp_path):
    lib = Library(tmp_path / "lib")
    for i in range(4):
        lib.add_clip(_rec(tmp_path, f"h{i}", seed=i))
    lib.save_indexes()
    lib.close()
    # a crash after more clips committed but before the index was saved
    lib = Library(tmp_path / "lib")
    lib._stores.clear()
    lib.add_clip(_rec(tmp_path, "h9", seed=9))
    lib.close()
    lib = Library(tmp_path / "lib")
    assert len(lib.store("s")) == 15  # caught up incrementally
    # a corrupt index file is rebuilt from the catalogue
    (lib.path / "indexes" / "s.faiss").write_bytes(b"garbage")
    lib2 = Library(tmp_path / "lib")
    assert len(lib2.store("s")) == 15


def test_hnsw_above_threshold_matches_exact(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3000, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = np.arange(3000) + 10
    exact, approx = FaissStore(16, hnsw_threshold=10**9), FaissStore(16, hnsw_threshold=1000)
    exact.build(ids, v)
    approx.build(ids, v)
    assert exact.kind == "exact" and approx.kind == "hnsw"
    q = v[:50] + 0.05 * rng.standard_normal((50, 16)).astype(np.float32)
    _, ie = exact.search(q, 10)
    _, ia = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ie, ia)])
    assert recall > 0.9
    approx.remove(ids[:3])  # HNSW removes by rebuilding without them
    assert len(approx) == len(ids) - 3
    assert not set(approx.search(v[:3], 10)[1].ravel().tolist()) & set(ids[:3].tolist())


def test_missing_library_is_refused(tmp_path):
    with pytest.raises(LibraryError, match="no library"):
        Library(tmp_path / "nope", create=False)


def test_migrations_upgrade_an_old_library(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    conn = db.connect(path)
    assert db.schema_version(conn) == SCHEMA_VERSION
    conn.execute("SELECT * FROM feedback")  # added by migration 2
    conn.execute("PRAGMA user_version = 99")
    with pytest.raises(LibraryError, match="newer"):
        db.migrate(conn)
