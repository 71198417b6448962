"""`Library`: the one Python API over a library folder, used by the CLI, the website and the loop.

    library/
      nels.db          SQLite (WAL): items (crawl state), clips, segments, vectors, labels, models...
      media/           the audio files, named by content hash
      indexes/         <space>.faiss + <space>.json, derived from nels.db and re-synced on open
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nels.errors import LibraryError
from nels.store import schema as db
from nels.store.vectors import FaissStore


@dataclass
class ClipRecord:
    """Everything one clip contributes, written in one transaction by `Library.add_clip`."""

    content_hash: str
    media_file: Path  # a local file to move/copy into media/
    duration: float
    provenance: dict[str, Any]  # source_uri, source_kind, title, uploader, licence, query, webpage_url, fetched_at
    starts: np.ndarray  # (n,) seconds
    ends: np.ndarray  # (n,)
    vectors: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # space -> (model name, (n, dim))
    probs: tuple[str, list[str], np.ndarray] | None = None  # (model name, labels, (n, C))
    move_media: bool = False  # True for downloads (a temp file we own), False for a user's file


PROVENANCE_KEYS = ("source_uri", "source_kind", "title", "uploader", "licence", "query", "webpage_url", "fetched_at")
TOP_LABELS = 5


class Library:
    """A library folder. `create=False` refuses a folder that holds no library (LibraryError)."""

    def __init__(self, path: str | os.PathLike, create: bool = True, hnsw_threshold: int = 50_000):
        self.path = Path(path).expanduser().resolve()
        dbfile = self.path / "nels.db"
        if not dbfile.exists():
            if not create:
                raise LibraryError(f"no library at {self.path} (create one with 'nels ingest' or pass --library DIR)")
            self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "media").mkdir(exist_ok=True)
        (self.path / "indexes").mkdir(exist_ok=True)
        self._dbfile = dbfile
        self._lock = threading.RLock()
        self._local = threading.local()
        self._conns: list = []
        self.conn  # noqa: B018 - open (and migrate) now, so a bad library fails here
        self.hnsw_threshold = hnsw_threshold
        self._stores: dict[str, FaissStore] = {}
        self._cache: dict[str, Any] = {}

    @property
    def conn(self):
        """This thread's SQLite connection: WAL lets readers in many threads (the web server's
        workers) run beside one writer, so searches need no global lock."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = db.connect(self._dbfile)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.save_indexes()
        self.close()

    # -- settings --------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                          (key, json.dumps(value)))

    # -- writing ---------------------------------------------------------------------------------
    def clip_by_hash(self, content_hash: str) -> int | None:
        row = self.conn.execute("SELECT id FROM clips WHERE content_hash=?", (content_hash,)).fetchone()
        return row[0] if row else None

    def add_clip(self, rec: ClipRecord, on_commit=None) -> int:
        """Store a clip with its segments, vectors, probabilities and labels: all of it or nothing.

        The media file is placed first (named by hash, so a re-run overwrites the same name); a
        crash before COMMIT leaves at most an orphan media file, which `vacuum` removes.
        `on_commit(conn, clip_id)` runs inside the same transaction (the crawl table marks its item
        done there, so an item is never both stored and pending). Returns the clip id (the existing
        one, with nothing written, when this content is already stored).
        """
        existing = self.clip_by_hash(rec.content_hash)
        if existing is not None:
            if on_commit is not None:
                on_commit(self.conn, existing)
            return existing
        ext = rec.media_file.suffix.lower() or ".bin"
        rel = f"media/{rec.content_hash[:2]}/{rec.content_hash}{ext}"
        dest = self.path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = dest.with_suffix(dest.suffix + ".part")
            if rec.move_media:
                shutil.move(str(rec.media_file), tmp)
            else:
                shutil.copyfile(rec.media_file, tmp)
            os.replace(tmp, dest)
        prov = {k: rec.provenance.get(k) for k in PROVENANCE_KEYS}
        extra = {k: v for k, v in rec.provenance.items() if k not in PROVENANCE_KEYS}
        c = self.conn
        with self._lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute(
                    "INSERT INTO clips(content_hash, media_path, source_uri, source_kind, title, uploader, licence, query,"
                    " webpage_url, fetched_at, duration, added_at, meta) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rec.content_hash, rel, prov["source_uri"], prov["source_kind"], prov["title"], prov["uploader"],
                     prov["licence"], prov["query"], prov["webpage_url"], prov["fetched_at"], float(rec.duration),
                     time.time(), json.dumps(extra, default=str) if extra else None))
                clip_id = cur.lastrowid
                seg_ids = self._insert_segments(clip_id, rec.starts, rec.ends)
                self._insert_encodings(seg_ids, rec.vectors, rec.probs)
                if on_commit is not None:
                    on_commit(c, clip_id)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return clip_id

    def _insert_segments(self, clip_id: int, starts, ends) -> list[int]:
        ids = []
        for s, e in zip(starts, ends):
            ids.append(self.conn.execute("INSERT INTO segments(clip_id, start, end) VALUES(?,?,?)",
                                         (clip_id, float(s), float(e))).lastrowid)
        return ids

    def _insert_encodings(self, seg_ids: Sequence[int], vectors, probs) -> None:
        c = self.conn
        for space, (model, vecs) in vectors.items():
            vecs = np.asarray(vecs, dtype=np.float32)
            c.executemany("INSERT OR REPLACE INTO vectors(space, segment_id, model, vec) VALUES(?,?,?,?)",
                          [(space, sid, model, vecs[i].tobytes()) for i, sid in enumerate(seg_ids)])
        if probs is not None:
            model, labels, p = probs
            p = np.asarray(p, dtype=np.float32)
            self._register_labels(model, labels)
            c.executemany("INSERT OR REPLACE INTO probs(segment_id, model, probs) VALUES(?,?,?)",
                          [(sid, model, p[i].tobytes()) for i, sid in enumerate(seg_ids)])
            rows = []
            for i, sid in enumerate(seg_ids):
                for j in np.argsort(-p[i])[:TOP_LABELS]:
                    rows.append((sid, labels[j], float(p[i, j])))
            c.execute(f"DELETE FROM labels WHERE segment_id IN ({','.join('?' * len(seg_ids))})", list(seg_ids))
            c.executemany("INSERT INTO labels(segment_id, label, prob) VALUES(?,?,?)", rows)

    def _register_labels(self, model: str, labels: list[str]) -> None:
        row = self.conn.execute("SELECT labels FROM models WHERE name=?", (model,)).fetchone()
        if row is None:
            self.conn.execute("INSERT INTO models(name, kind, labels, created_at) VALUES(?,?,?,?)",
                              (model, "classifier", json.dumps(labels), time.time()))

    def replace_encodings(self, clip_id: int, vectors, probs, drop_spaces: Sequence[str] = ()) -> None:
        """Re-index one clip with another model (same segments), atomically."""
        seg_ids = [r[0] for r in self.conn.execute("SELECT id FROM segments WHERE clip_id=? ORDER BY id", (clip_id,))]
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for space in drop_spaces:
                    self.conn.execute("DELETE FROM vectors WHERE space=? AND segment_id IN "
                                      "(SELECT id FROM segments WHERE clip_id=?)", (space, clip_id))
                if probs is None:
                    self.conn.execute("DELETE FROM probs WHERE segment_id IN (SELECT id FROM segments WHERE clip_id=?)",
                                      (clip_id,))
                    self.conn.execute("DELETE FROM labels WHERE segment_id IN (SELECT id FROM segments WHERE clip_id=?)",
                                      (clip_id,))
                self._insert_encodings(seg_ids, vectors, probs)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def remove_clips(self, clip_ids: Sequence[int]) -> int:
        """Delete clips (segments, vectors, labels cascade) and their media. Returns how many existed."""
        removed = 0
        for cid in clip_ids:
            row = self.conn.execute("SELECT media_path, content_hash FROM clips WHERE id=?", (cid,)).fetchone()
            if row is None:
                continue
            with self._lock:
                self.conn.execute("BEGIN IMMEDIATE")
                seg_ids = [r[0] for r in self.conn.execute("SELECT id FROM segments WHERE clip_id=?", (cid,))]
                self.conn.execute("DELETE FROM clips WHERE id=?", (cid,))
                self.conn.execute("UPDATE items SET status='removed', clip_id=NULL WHERE clip_id=?", (cid,))
                self.conn.execute("COMMIT")
            removed += 1
            for store in self._stores.values():
                try:
                    store.remove(np.asarray(seg_ids, dtype=np.int64))
                except NotImplementedError:
                    pass  # HNSW: sync() rebuilds from the catalogue
            media = self.path / row[0]
            if media.exists() and self.conn.execute("SELECT 1 FROM clips WHERE media_path=?", (row[0],)).fetchone() is None:
                media.unlink()
        self._cache.clear()
        return removed

    # -- vector indexes ----------------------------------------------------------------------------
    def spaces(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT space FROM vectors")]

    def store(self, space: str) -> FaissStore:
        """The synced FAISS index of `space` (loaded from disk, caught up with the catalogue)."""
        with self._lock:
            st = self._stores.get(space)
            if st is None:
                row = self.conn.execute("SELECT vec FROM vectors WHERE space=? LIMIT 1", (space,)).fetchone()
                if row is None:
                    raise LibraryError(f"the library has no '{space}' vectors")
                st = FaissStore(len(row[0]) // 4, self.path / "indexes" / f"{space}.faiss", self.hnsw_threshold)
                st.load()
                self._stores[space] = st
                full = True  # first use: catch anything (removals, a crash) since the file was written
            else:
                full = False  # later: new vectors only; this object's own removals update the index directly
            if st.sync(self.conn, space, full=full):
                st.save()
            return st

    def save_indexes(self) -> None:
        for space in self.spaces():
            st = self.store(space)  # sync + save when behind
            if st.sync(self.conn, space, full=True):
                st.save()

    # -- reading -------------------------------------------------------------------------------------
    def segment_rows(self, seg_ids: Sequence[int]) -> dict[int, dict]:
        """segment id -> its clip's fields, start/end and top labels (one query each)."""
        if not len(seg_ids):
            return {}
        q = ",".join("?" * len(seg_ids))
        rows = self.conn.execute(
            f"SELECT s.id AS segment_id, s.clip_id, s.start, s.end, c.title, c.source_uri, c.webpage_url, c.duration,"
            f" c.media_path, c.query, c.uploader, c.licence FROM segments s JOIN clips c ON c.id=s.clip_id"
            f" WHERE s.id IN ({q})", [int(i) for i in seg_ids]).fetchall()
        out = {r["segment_id"]: dict(r) for r in rows}
        for r in self.conn.execute(f"SELECT segment_id, label, prob FROM labels WHERE segment_id IN ({q})"
                                   f" ORDER BY prob DESC", [int(i) for i in seg_ids]):
            if r[0] in out:
                out[r[0]].setdefault("labels", []).append({"label": r[1], "prob": round(r[2], 4)})
        for v in out.values():
            v.setdefault("labels", [])
        return out

    def clip(self, clip_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM clips WHERE id=?", (clip_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        segs = self.conn.execute("SELECT id, start, end FROM segments WHERE clip_id=? ORDER BY start", (clip_id,)).fetchall()
        rows = self.segment_rows([s[0] for s in segs])
        out["segments"] = [{"segment_id": s[0], "start": s[1], "end": s[2], "labels": rows[s[0]]["labels"]} for s in segs]
        return out

    def prob_matrix(self) -> tuple[np.ndarray, np.ndarray, list[str], str] | None:
        """(segment ids, probs (n, C), labels, model) over the whole library, cached until it changes."""
        # MAX over the primary key is O(log n) (COUNT(*) scanned 100k rows: 12 ms per search); rows of
        # segments removed since are harmless: results are looked up in the catalogue and dropped
        stamp = self.conn.execute("SELECT MAX(segment_id) FROM probs").fetchone()
        cached = self._cache.get("probs")
        if cached and cached[0] == tuple(stamp):
            return cached[1]
        if stamp[0] is None:
            return None
        model = self.conn.execute("SELECT model FROM probs LIMIT 1").fetchone()[0]
        labels = json.loads(self.conn.execute("SELECT labels FROM models WHERE name=?", (model,)).fetchone()[0])
        rows = self.conn.execute("SELECT segment_id, probs FROM probs WHERE model=? ORDER BY segment_id", (model,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), len(labels))
        val = (ids, mat, labels, model)
        self._cache["probs"] = (tuple(stamp), val)
        return val

    def stats(self) -> dict:
        c = self.conn
        one = lambda q, *a: c.execute(q, a).fetchone()[0]  # noqa: E731
        by_status = {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM items GROUP BY status")}
        failures = [dict(r) for r in c.execute(
            "SELECT uri, attempts, error, updated_at FROM items WHERE status='failed' ORDER BY updated_at DESC LIMIT 50")]
        return {
            "library": str(self.path),
            "clips": one("SELECT COUNT(*) FROM clips"),
            "segments": one("SELECT COUNT(*) FROM segments"),
            "hours": round((one("SELECT COALESCE(SUM(duration), 0) FROM clips") or 0) / 3600, 3),
            "spaces": {r[0]: {"vectors": r[1], "model": r[2]} for r in
                       c.execute("SELECT space, COUNT(*), MIN(model) FROM vectors GROUP BY space")},
            "classifier": (c.execute("SELECT model FROM probs LIMIT 1").fetchone() or [None])[0],
            "items": by_status,
            "failures": failures,
            "top_labels": [{"label": r[0], "segments": r[1]} for r in c.execute(
                "SELECT label, COUNT(*) n FROM labels l WHERE prob = (SELECT MAX(prob) FROM labels WHERE segment_id=l.segment_id)"
                " GROUP BY label ORDER BY n DESC LIMIT 10")],
            "feedback": one("SELECT COUNT(*) FROM feedback"),
            "schema_version": db.schema_version(c),
        }

    def data_version(self) -> int:
        """Changes whenever another connection (another thread, process or command) commits to the
        catalogue: a cheap "has anything changed since?" for caches of search answers."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def newest_ids(self) -> dict:
        """The newest clip and segment ids (0 when empty): an O(log n) "anything here / anything new?"
        for hot paths, where COUNT(*) would scan the tables."""
        row = self.conn.execute("SELECT (SELECT MAX(id) FROM clips), (SELECT MAX(id) FROM segments)").fetchone()
        return {"clips": row[0] or 0, "segments": row[1] or 0}
