"""The catalogue: the one module that speaks SQL. Clips, segments, vectors, probabilities, labels, models,
crawl items, jobs, feedback and learning iterations are read and written through `Catalogue`'s methods.

The catalogue is the single source of truth (vectors included, as float32 blobs): the vector indexes
are derived caches re-synced from it (`nels.store.vectors`). Every method that writes several rows does it
in one transaction, so a `kill -9` leaves the catalogue as it was before or after, never between.

One class, two databases: a SQLite file in WAL mode (the library's `nels.db`, the default) or PostgreSQL
(`postgresql://...`, which several machines write at once). The queries are written once, in SQLite's SQL;
`nels.store.dialect` opens the connections, begins transactions, keeps the schema version and translates
for PostgreSQL (placeholders, `INSERT OR REPLACE|IGNORE`, the scalar MAX/MIN, `end`, `rowid`, DDL types).
A new row's id comes from `self.dialect.insert_id`, not `lastrowid`. Connections are per thread.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from nels.config import RETRY_BACKOFF_SECONDS
from nels.errors import LibraryError, RejectedError
from nels.store.dialect import dialect_for, dialect_of, is_postgres, without_password
from nels.store.schema import MIGRATIONS, SCHEMA_VERSION

PROVENANCE_KEYS = ("source_uri", "source_kind", "title", "uploader", "licence", "query", "webpage_url", "fetched_at")
TOP_LABELS = 5  # labels kept per segment for display and filtering
MAX_KEPT_JOBS = 100
NEVER = 253402300799.0  # next_attempt_at of an item that failed for good (9999-12-31)
# the weak-query log's own SQLite file (`Catalogue._log`): the catalogue's table `query_log` (schema.py), there
QUERY_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS query_log (
    query TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0, best_score REAL, best_label TEXT,
    first_at REAL NOT NULL, last_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'open'
);
CREATE INDEX IF NOT EXISTS query_log_status ON query_log(status, count)
"""


# -- connections and migrations ----------------------------------------------------------------------------
def connect(location: str | Path, readonly: bool = False):
    """Open the catalogue (a SQLite file, or a PostgreSQL URL) migrated to SCHEMA_VERSION (unless readonly)."""
    conn = dialect_for(location).connect(location, readonly)
    if not readonly:
        migrate(conn)
    return conn


def schema_version(conn) -> int:
    return dialect_of(conn).schema_version(conn)


def migrate(conn) -> None:
    """Apply pending migrations, each in its own transaction (a crash leaves a valid older version); several
    processes opening one catalogue at once: one migrates, the others find it done."""
    dialect = dialect_of(conn)
    version = dialect.schema_version(conn)
    if version > SCHEMA_VERSION:
        raise LibraryError(f"library schema v{version} is newer than this nels (v{SCHEMA_VERSION}); upgrade nels")
    for i in range(version, SCHEMA_VERSION):
        dialect.begin_migration(conn)
        try:
            if dialect.schema_version(conn) != i:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for stmt in MIGRATIONS[i].split(";"):
                if stmt.strip():
                    conn.execute(dialect.ddl(stmt))
            dialect.set_schema_version(conn, i + 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _in(ids: Sequence) -> str:
    return ",".join("?" * len(ids))


def _finite(a: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise RejectedError(f"non-finite {what}: refused (the audio or the model is broken)")
    return a


class Catalogue:
    """The catalogue of one library: `location` is a SQLite file (`<library>/nels.db`) or a PostgreSQL URL.
    `create=False` refuses a PostgreSQL database that holds no library yet (LibraryError)."""

    def __init__(self, location: str | Path, create: bool = True):
        self.location = str(location) if is_postgres(location) else Path(location)
        self.dialect = dialect_for(location)
        self._lock = threading.RLock()  # one writer transaction at a time from this object's threads
        self._local = threading.local()
        self._conns: list = []
        self._stamp_conn = None  # SQLite: the one connection `data_version` is read on
        self._stamp_lock = threading.Lock()
        if not create and is_postgres(location):
            conn = self.dialect.connect(location)
            try:
                empty = self.dialect.schema_version(conn) == 0
            finally:
                conn.close()
            if empty:
                raise LibraryError(f"no library in the catalogue {without_password(location)} (create one with"
                                   f" 'nels ingest')")
        self.conn  # noqa: B018 - open (and migrate) now, so a bad library fails here

    @property
    def dbfile(self) -> Path | str:
        """The catalogue's location (the name of SQLite days)."""
        return self.location

    @property
    def conn(self):
        """This thread's connection (sqlite3, or `dialect.PgConnection`: both take the same SQL with `?`).
        For tests and one-off scripts; NELS's own code calls the methods."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = connect(self.location)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
            self._stamp_conn = None
        self._local = threading.local()

    @contextmanager
    def transaction(self, serial: bool = False):
        """BEGIN ... COMMIT, rolled back on any exception. SQLite: BEGIN IMMEDIATE (one writer at a time).
        PostgreSQL: writers run side by side (unique keys and conditional updates keep them apart); `serial`
        also makes them wait for each other (a check-then-write such as taking the next job)."""
        c = self.conn
        with self._lock:
            try:
                self.dialect.begin(c, serial)
                yield c
                c.execute("COMMIT")
            except BaseException as exc:
                # SQLite has already rolled back after some errors (a full disk): ROLLBACK would then fail with
                # "no transaction is active" and hide the real error
                if self.dialect.in_transaction(c):
                    try:
                        c.execute("ROLLBACK")
                    except self.dialect.Error:
                        pass
                if isinstance(exc, self.dialect.Error) and self.dialect.storage_error(exc) is not exc:
                    raise self.dialect.storage_error(exc) from exc
                raise

    def _write(self, sql: str, args: Sequence = (), conn=None):
        """One write statement outside `transaction` (a full disk becomes DiskFullError); conn : another
        connection than this thread's to the catalogue (the weak-query log's)."""
        try:
            return (conn or self.conn).execute(sql, args)
        except self.dialect.Error as exc:
            err = self.dialect.storage_error(exc)
            if err is exc:
                raise
            raise err from exc

    def _one(self, sql: str, *args):
        row = self.conn.execute(sql, args).fetchone()
        return row[0] if row is not None else None

    # -- state -------------------------------------------------------------------------------------------
    def schema_version(self) -> int:
        return schema_version(self.conn)

    def data_version(self) -> int:
        """Changes whenever a connection (thread, process or command) commits to the catalogue: a cheap "has
        anything changed since?" for caches of search answers. The weak-query log is not the catalogue (SQLite:
        its own file, see `log_weak_query`), so logging a query changes nothing here.

        SQLite's counter belongs to a connection (two threads' connections count differently: a value read in
        one thread means nothing in another), so it is read on one connection of this object's, kept for that
        and never written on: values read in any thread compare. PostgreSQL's is the server's, the same on every
        connection."""
        if isinstance(self.location, str):
            return self.dialect.data_version(self.conn)
        with self._stamp_lock:
            if self._stamp_conn is None:
                self._stamp_conn = self.dialect.connect(self.location, readonly=True)
                with self._lock:
                    self._conns.append(self._stamp_conn)
            return self.dialect.data_version(self._stamp_conn)

    def newest_ids(self) -> dict:
        """The newest clip and segment ids (0 when empty): O(log n), where COUNT(*) would scan."""
        row = self.conn.execute("SELECT (SELECT MAX(id) FROM clips), (SELECT MAX(id) FROM segments)").fetchone()
        return {"clips": row[0] or 0, "segments": row[1] or 0}

    def get_meta(self, key: str, default=None):
        v = self._one("SELECT value FROM meta WHERE key=?", key)
        return json.loads(v) if v is not None else default

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                          (key, json.dumps(value)))

    # -- clips -------------------------------------------------------------------------------------------
    def clip_by_hash(self, content_hash: str) -> int | None:
        return self._one("SELECT id FROM clips WHERE content_hash=?", content_hash)

    def add_clip(self, content_hash: str, media_path: str, duration: float, provenance: dict, starts, ends,
                 vectors: dict, probs, item_id: int | None = None,
                 original: tuple[int, int] | None = None) -> tuple[int, bool]:
        """Store a clip with its segments, vectors, probabilities and top labels, and mark its crawl item
        done: all of it or nothing. The hash is checked inside the transaction, so two writers never
        store one content twice. Returns (clip id, True when it was added; False: already stored).
        original : (size, mtime_ns) of a file kept in place (`media_path` is then its absolute path)."""
        prov = {k: provenance.get(k) for k in PROVENANCE_KEYS}
        extra = {k: v for k, v in provenance.items() if k not in PROVENANCE_KEYS}
        with self.transaction() as c:
            # the UNIQUE hash decides: a concurrent writer of the same content waits here for the other's
            # commit, then stores nothing
            clip_id = self.dialect.insert_id(
                c, "INSERT INTO clips(content_hash, media_path, source_uri, source_kind, title, uploader, licence, query,"
                " webpage_url, fetched_at, duration, added_at, meta, media_size, media_mtime_ns)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(content_hash) DO NOTHING",
                (content_hash, media_path, prov["source_uri"], prov["source_kind"], prov["title"], prov["uploader"],
                 prov["licence"], prov["query"], prov["webpage_url"], prov["fetched_at"], float(duration),
                 time.time(), json.dumps(extra, default=str) if extra else None,
                 *((int(original[0]), int(original[1])) if original else (None, None))))
            if clip_id is None:
                existing = self.clip_by_hash(content_hash)
                if item_id is not None:
                    self.mark_done(item_id, existing, content_hash)
                return existing, False
            # one batch (a round trip to a server, not one per segment); ids ascend in insertion order
            c.executemany("INSERT INTO segments(clip_id, start, end) VALUES(?,?,?)",
                          [(clip_id, float(s), float(e)) for s, e in zip(starts, ends)])
            seg_ids = self.segment_ids(clip_id)
            self._insert_encodings(seg_ids, vectors, probs)
            if item_id is not None:
                self.mark_done(item_id, clip_id, content_hash)
        return clip_id, True

    def _insert_encodings(self, seg_ids: Sequence[int], vectors: dict, probs) -> None:
        c = self.conn
        rows = []  # every space in one batch (one round trip to a server)
        for space, (model, vecs) in vectors.items():
            vecs = _finite(np.asarray(vecs, dtype=np.float32), f"{space} vectors")
            rows += [(space, sid, model, vecs[i].tobytes()) for i, sid in enumerate(seg_ids)]
        if rows:
            c.executemany("INSERT OR REPLACE INTO vectors(space, segment_id, model, vec) VALUES(?,?,?,?)", rows)
        if probs is None:
            return
        # one classifier (model, labels, (n, C)) or several: each keeps its own probability rows; the top
        # labels of all of them (the best probability where two share a label name) serve display and filters
        c.execute(f"DELETE FROM labels WHERE segment_id IN ({_in(seg_ids)})", list(seg_ids))
        for model, labels, p in ([probs] if isinstance(probs, tuple) else probs):
            p = _finite(np.asarray(p, dtype=np.float32), f"{model} class probabilities")
            self.register_model(model, "classifier", None, labels)
            c.executemany("INSERT OR REPLACE INTO probs(segment_id, model, probs) VALUES(?,?,?)",
                          [(sid, model, p[i].tobytes()) for i, sid in enumerate(seg_ids)])
            rows = [(sid, labels[j], float(p[i, j])) for i, sid in enumerate(seg_ids)
                    for j in np.argsort(-p[i])[:TOP_LABELS]]
            c.executemany("INSERT INTO labels(segment_id, label, prob) VALUES(?,?,?) ON CONFLICT(segment_id, label)"
                          " DO UPDATE SET prob=MAX(prob, excluded.prob)", rows)

    def replace_encodings(self, clip_id: int, vectors: dict, probs, drop_spaces: Sequence[str] = ()) -> None:
        """Re-index one clip with another model (same segments), atomically."""
        seg_ids = self.segment_ids(clip_id)
        with self.transaction() as c:
            for space in drop_spaces:
                c.execute("DELETE FROM vectors WHERE space=? AND segment_id IN "
                          "(SELECT id FROM segments WHERE clip_id=?)", (space, clip_id))
            if probs is not None:  # the new classifiers replace every old one
                c.execute("DELETE FROM probs WHERE segment_id IN (SELECT id FROM segments WHERE clip_id=?)", (clip_id,))
            self._insert_encodings(seg_ids, vectors, probs)

    def remove_clip(self, clip_id: int) -> tuple[str, list[int]] | None:
        """Delete a clip (segments, vectors, labels cascade); its crawl item becomes 'removed'.
        Returns (media path, segment ids), or None when there is no such clip."""
        with self.transaction() as c:
            row = c.execute("SELECT media_path FROM clips WHERE id=?", (clip_id,)).fetchone()
            if row is None:
                return None
            seg_ids = self.segment_ids(clip_id)
            c.execute("DELETE FROM clips WHERE id=?", (clip_id,))
            c.execute("UPDATE items SET status='removed', clip_id=NULL WHERE clip_id=?", (clip_id,))
        return row[0], seg_ids

    def media_in_use(self, media_path: str) -> bool:
        return self._one("SELECT 1 FROM clips WHERE media_path=?", media_path) is not None

    # -- clips kept in place (`nels ingest --in-place`: media_path is the user's file, media_size is not NULL) --
    def original(self, media_path: str, clip_id: int | None = None) -> dict | None:
        """{id, content_hash, size, mtime_ns} of the clip kept in place at `media_path` (that clip: `clip_id`;
        else the first one: two clips share a path only when one of them changed), or None."""
        sql = ("SELECT id, content_hash, media_size, media_mtime_ns FROM clips WHERE media_path=?"
               " AND media_size IS NOT NULL")
        row = (self.conn.execute(sql + " ORDER BY id LIMIT 1", (media_path,)) if clip_id is None else
               self.conn.execute(sql + " AND id=?", (media_path, int(clip_id)))).fetchone()
        return None if row is None else {"id": row[0], "content_hash": row[1], "size": row[2], "mtime_ns": row[3]}

    def originals(self) -> list[dict]:
        """Every clip kept in place: {id, media_path, content_hash, size, mtime_ns}, in id order."""
        return [{"id": r[0], "media_path": r[1], "content_hash": r[2], "size": r[3], "mtime_ns": r[4]}
                for r in self.conn.execute("SELECT id, media_path, content_hash, media_size, media_mtime_ns FROM clips"
                                           " WHERE media_size IS NOT NULL ORDER BY id")]

    def set_original(self, clip_id: int, media_path: str, size: int, mtime_ns: int) -> bool:
        """Point a clip kept in place at `media_path` (a moved original found again) or record its new size and
        time (the same content, touched). Returns False when `clip_id` is not a clip kept in place."""
        cur = self._write("UPDATE clips SET media_path=?, media_size=?, media_mtime_ns=? WHERE id=?"
                          " AND media_size IS NOT NULL", (media_path, int(size), int(mtime_ns), int(clip_id)))
        return (cur.rowcount or 0) > 0

    def clip_exists(self, clip_id: int) -> bool:
        return self._one("SELECT 1 FROM clips WHERE id=?", clip_id) is not None

    def clip_media(self, clip_id: int) -> dict | None:
        """{media_path, duration} of a clip, or None."""
        row = self.conn.execute("SELECT media_path, duration FROM clips WHERE id=?", (clip_id,)).fetchone()
        return dict(row) if row is not None else None

    def clips(self, columns: Sequence[str] = ("id", "media_path")) -> list[sqlite3.Row]:
        """Every clip's `columns` (clip table fields), in id order."""
        allowed = {"id", "media_path", "source_uri", "title", "query", "duration", "content_hash", "webpage_url"}
        if not set(columns) <= allowed:
            raise ValueError(f"unknown clip columns: {sorted(set(columns) - allowed)}")
        return self.conn.execute(f"SELECT {', '.join(columns)} FROM clips ORDER BY id").fetchall()

    def segment_ids(self, clip_id: int) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM segments WHERE clip_id=? ORDER BY id", (clip_id,))]

    def segment_spans(self, clip_id: int) -> list[tuple[float, float]]:
        return [(r[0], r[1]) for r in self.conn.execute("SELECT start, end FROM segments WHERE clip_id=? ORDER BY id",
                                                        (clip_id,))]

    def segment_in_clip(self, segment_id: int, clip_id: int) -> bool:
        return self._one("SELECT 1 FROM segments WHERE id=? AND clip_id=?", segment_id, clip_id) is not None

    def segment_rows(self, seg_ids: Sequence[int]) -> dict[int, dict]:
        """segment id -> its clip's fields, start/end and top labels (one query each)."""
        if not len(seg_ids):
            return {}
        ids = [int(i) for i in seg_ids]
        q = _in(ids)
        rows = self.conn.execute(
            f"SELECT s.id AS segment_id, s.clip_id, s.start, s.end, c.title, c.source_uri, c.webpage_url, c.duration,"
            f" c.media_path, c.query, c.uploader, c.licence FROM segments s JOIN clips c ON c.id=s.clip_id"
            f" WHERE s.id IN ({q})", ids).fetchall()
        out = {r["segment_id"]: dict(r) for r in rows}
        for r in self.conn.execute(f"SELECT segment_id, label, prob FROM labels WHERE segment_id IN ({q})"
                                   f" ORDER BY prob DESC", ids):
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
        segs = self.conn.execute("SELECT id, start, end FROM segments WHERE clip_id=? ORDER BY start",
                                 (clip_id,)).fetchall()
        rows = self.segment_rows([s[0] for s in segs])
        out["segments"] = [{"segment_id": s[0], "start": s[1], "end": s[2], "labels": rows[s[0]]["labels"]}
                           for s in segs]
        return out

    def clip_timeline(self, clip_id: int) -> dict | None:
        """`clip` for a timeline, in two queries ({segment_id, start, end, labels: [{label, prob}], most probable
        first}): a 33-minute clip's 1870 segments and their 18,700 labels (CNN + YAMNet) are one query of ~20 ms
        on 2 busy cores. The labels are all the stored ones, so the caller can show the most specific
        (`nels.search.labels.specific_labels`), not only the most probable."""
        row = self.conn.execute("SELECT * FROM clips WHERE id=?", (clip_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        segs = self.conn.execute("SELECT id, start, end FROM segments WHERE clip_id=? ORDER BY start, id",
                                 (clip_id,)).fetchall()
        labels: dict[int, list] = {}
        for sid, label, prob in self.conn.execute(
                "SELECT l.segment_id, l.label, l.prob FROM segments s JOIN labels l ON l.segment_id = s.id"
                " WHERE s.clip_id=?", (clip_id,)):
            labels.setdefault(sid, []).append((-prob, label))
        out["segments"] = [{"segment_id": s[0], "start": s[1], "end": s[2],
                            "labels": [{"label": lab, "prob": round(-p, 4)} for p, lab in sorted(labels.get(s[0], ()))]}
                           for s in segs]
        return out

    # -- vectors -----------------------------------------------------------------------------------------
    def spaces(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT space FROM vectors")]

    def has_space(self, space: str) -> bool:
        return self._one("SELECT 1 FROM vectors WHERE space=? LIMIT 1", space) is not None

    def has_vectors(self) -> bool:
        return self._one("SELECT 1 FROM vectors LIMIT 1") is not None

    def vector_dim(self, space: str) -> int | None:
        v = self._one("SELECT vec FROM vectors WHERE space=? LIMIT 1", space)
        return len(v) // 4 if v is not None else None

    def newest_vector_id(self, space: str) -> int:
        """The newest segment id with a vector in `space` (-1: none): O(log n)."""
        v = self._one("SELECT MAX(segment_id) FROM vectors WHERE space=?", space)
        return int(v) if v is not None else -1

    def vector_summary(self, space: str) -> tuple[int, int, str | None]:
        """(count, newest segment id or -1, model) of `space`'s vectors."""
        row = self.conn.execute("SELECT COUNT(*), COALESCE(MAX(segment_id), -1), MIN(model) FROM vectors"
                                " WHERE space=?", (space,)).fetchone()
        return int(row[0]), int(row[1]), row[2]

    def count_vectors_upto(self, space: str, max_id: int) -> int:
        return int(self._one("SELECT COUNT(*) FROM vectors WHERE space=? AND segment_id<=?", space, max_id))

    def iter_vectors(self, space: str, after_id: int = -1, dim: int | None = None,
                     batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(segment ids, vectors) of `space` with id > after_id, in id order, in blocks of `batch` (one query
        per block, resuming after the last id: memory stays flat whatever the database)."""
        while rows := self.conn.execute("SELECT segment_id, vec FROM vectors WHERE space=? AND segment_id>?"
                                        " ORDER BY segment_id LIMIT ?", (space, after_id, batch)).fetchall():
            after_id = rows[-1][0]
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            yield ids, vecs

    def clip_vector_models(self, clip_id: int) -> dict[str, str]:
        """space -> the model that made this clip's vectors there."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT v.space, MIN(v.model) FROM vectors v JOIN segments s ON s.id=v.segment_id WHERE s.clip_id=?"
            " GROUP BY v.space", (clip_id,))}

    # -- class probabilities -----------------------------------------------------------------------------
    def has_probs(self) -> bool:
        return self._one("SELECT 1 FROM probs LIMIT 1") is not None

    def newest_prob_id(self) -> int | None:
        return self._one("SELECT MAX(segment_id) FROM probs")

    def prob_models(self) -> list[str]:
        """The classifiers whose probabilities the library holds, in the order they were registered."""
        have = {r[0] for r in self.conn.execute("SELECT DISTINCT model FROM probs")}
        order = [r[0] for r in self.conn.execute("SELECT name FROM models ORDER BY id")]
        return [m for m in order if m in have] + sorted(have - set(order))

    def prob_matrix(self, model: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str], str] | None:
        """(segment ids, probs (n, C), labels, model) of one classifier (None: the first) over the whole
        library; None without probabilities."""
        if model is None:
            models = self.prob_models()
            if not models:
                return None
            model = models[0]
        labels = self.model_labels(model)
        rows = self.conn.execute("SELECT segment_id, probs FROM probs WHERE model=? ORDER BY segment_id",
                                 (model,)).fetchall()
        if not rows:
            return None
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), len(labels))
        return ids, mat, labels, model

    # -- models ------------------------------------------------------------------------------------------
    def register_model(self, name: str, kind: str, path: str | None, labels: Sequence[str] | None) -> None:
        """Remember a model (first registration wins)."""
        self.conn.execute("INSERT OR IGNORE INTO models(name, kind, path, labels, created_at) VALUES(?,?,?,?,?)",
                          (name, kind, path, json.dumps(list(labels)) if labels is not None else None, time.time()))

    def model_labels(self, name: str) -> list[str]:
        v = self._one("SELECT labels FROM models WHERE name=?", name)
        return json.loads(v) if v else []

    def models(self) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT id, name, kind, path, labels, created_at, meta FROM models ORDER BY id"):
            d = dict(r)
            d["labels"] = json.loads(d["labels"] or "null") or []
            d["meta"] = json.loads(d["meta"]) if d.get("meta") else None
            out.append(d)
        return out

    # -- statistics --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        c = self.conn
        one = self._one
        return {
            "clips": one("SELECT COUNT(*) FROM clips"),
            "segments": one("SELECT COUNT(*) FROM segments"),
            "hours": round((one("SELECT COALESCE(SUM(duration), 0) FROM clips") or 0) / 3600, 3),
            "spaces": {r[0]: {"vectors": r[1], "model": r[2]} for r in
                       c.execute("SELECT space, COUNT(*), MIN(model) FROM vectors GROUP BY space")},
            "classifier": (self.prob_models() or [None])[0],
            "classifiers": self.prob_models(),
            "items": {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM items GROUP BY status")},
            "failures": [dict(r) for r in c.execute(
                "SELECT uri, attempts, error, updated_at FROM items WHERE status='failed'"
                " ORDER BY updated_at DESC LIMIT 50")],
            "top_labels": [{"label": r[0], "segments": r[1]} for r in c.execute(
                "SELECT label, COUNT(*) n FROM labels l WHERE prob = (SELECT MAX(prob) FROM labels"
                " WHERE segment_id=l.segment_id) GROUP BY label ORDER BY n DESC LIMIT 10")],
            "feedback": one("SELECT COUNT(*) FROM feedback"),
            "schema_version": self.schema_version(),
        }

    # -- crawl items -------------------------------------------------------------------------------------
    def register_items(self, items: Iterable[Any]) -> list[int]:
        """Insert new items (objects with uri, kind, query, title, uploader, duration, licence, webpage_url);
        existing URIs keep their state, gaining provenance they lacked. Returns their ids."""
        now = time.time()
        ids = []
        for it in items:
            self._write(
                "INSERT INTO items(uri, kind, query, title, uploader, duration, licence, webpage_url, created_at,"
                " updated_at) VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(uri) DO UPDATE SET"
                " query=COALESCE(items.query, excluded.query), title=COALESCE(items.title, excluded.title),"
                " uploader=COALESCE(items.uploader, excluded.uploader),"
                " duration=COALESCE(items.duration, excluded.duration),"
                " status=CASE WHEN items.status='removed' THEN 'pending' ELSE items.status END",
                (it.uri, it.kind, it.query, it.title, it.uploader, it.duration, it.licence, it.webpage_url, now, now))
            ids.append(self._one("SELECT id FROM items WHERE uri=?", it.uri))
        return ids

    def due_items(self, ids: list[int], retries: int, now: float | None = None) -> list[sqlite3.Row]:
        """Of `ids`, those to work on now: pending, or failed with attempts left and backoff elapsed."""
        now = time.time() if now is None else now
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out += self.conn.execute(
                f"SELECT * FROM items WHERE id IN ({_in(chunk)}) AND (status='pending' OR"
                f" (status='failed' AND attempts < ? AND next_attempt_at <= ?)) ORDER BY id",
                (*chunk, retries, now)).fetchall()
        return out

    def mark_done(self, item_id: int, clip_id: int, content_hash: str) -> None:
        self._write("UPDATE items SET status='done', clip_id=?, content_hash=?, error=NULL, claimed_by=NULL,"
                    " attempts=attempts+1, updated_at=? WHERE id=?", (clip_id, content_hash, time.time(), item_id))

    def mark_skipped(self, item_id: int, reason: str) -> None:
        self._write("UPDATE items SET status='skipped', error=?, claimed_by=NULL, updated_at=? WHERE id=?",
                    (reason, time.time(), item_id))

    def mark_failed(self, item_id: int, error: str, permanent: bool, retries: int) -> None:
        """A failed attempt: retried later with exponential backoff, or never (permanent, or out of tries)."""
        attempts = (self._one("SELECT attempts FROM items WHERE id=?", item_id) or 0) + 1  # tries made, as shown
        now = time.time()
        # a permanent error is never due again (its attempts stay true: `stats` shows 1 for a file tried once)
        due = NEVER if permanent else now + RETRY_BACKOFF_SECONDS * 2 ** max(0, attempts - 1)
        self._write("UPDATE items SET status='failed', error=?, attempts=?, next_attempt_at=?, updated_at=?,"
                    " claimed_by=NULL WHERE id=?", (error, attempts, due, now, item_id))

    # an item being processed is claimed by its ingest run (claimed_by = "host:pid:nonce"), so that two runs
    # over the same inputs never fetch and encode one item twice; mark_* release the claim
    def claim_item(self, item_id: int, owner: str, retries: int, now: float | None = None) -> bool:
        """Claim `item_id` for `owner` if it is still due and no other run holds it. True: it is ours."""
        now = time.time() if now is None else now
        cur = self._write(
            "UPDATE items SET claimed_by=?, claimed_at=? WHERE id=? AND (claimed_by IS NULL OR claimed_by=?) AND"
            " (status='pending' OR (status='failed' AND attempts < ? AND next_attempt_at <= ?))",
            (owner, now, item_id, owner, retries, now))
        return cur.rowcount == 1

    def item_claimed_elsewhere(self, item_id: int, owner: str) -> bool:
        """Whether another run than `owner` holds `item_id` now."""
        return self._one("SELECT 1 FROM items WHERE id=? AND claimed_by IS NOT NULL AND claimed_by != ?",
                         item_id, owner) is not None

    def claim_owners(self) -> dict[str, float]:
        """owner -> its oldest claim's time, of every run that holds claims."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT claimed_by, MIN(claimed_at) FROM items WHERE claimed_by IS NOT NULL GROUP BY claimed_by")}

    def release_claims(self, owner: str) -> int:
        """Forget the claims of `owner` (a finished or dead run). Returns how many there were."""
        return self._write("UPDATE items SET claimed_by=NULL, claimed_at=NULL WHERE claimed_by=?", (owner,)).rowcount

    def next_attempt_at(self, ids: list[int]) -> float:
        """The earliest time one of `ids` may be tried again."""
        return min(r[0] for r in self.conn.execute(
            f"SELECT next_attempt_at FROM items WHERE id IN ({_in(ids)})", ids))

    def failed_items(self, ids: list[int]) -> list[tuple[str, str]]:
        """(uri, error) of the items among `ids` that failed for good or for now."""
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out += [(r[0], r[1]) for r in self.conn.execute(
                f"SELECT uri, error FROM items WHERE status='failed' AND id IN ({_in(chunk)})", chunk)]
        return out

    def items_touched_since(self, t: float) -> dict[str, int]:
        """status -> how many items changed since time `t` (a job's progress)."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT status, COUNT(*) FROM items WHERE updated_at >= ? GROUP BY status", (t,))}

    # -- feedback ----------------------------------------------------------------------------------------
    def add_feedback(self, query: str, mode: str | None, clip_id: int, segment_id: int | None, relevant: bool,
                     label: str | None) -> int:
        return self.dialect.insert_id(
            self.conn, "INSERT INTO feedback(query, mode, clip_id, segment_id, relevant, label, created_at)"
            " VALUES(?,?,?,?,?,?,?)", (query, mode, clip_id, segment_id, int(relevant), label, time.time()))

    def latest_feedback(self, query: str) -> list[dict]:
        """The latest judgement per clip for `query`."""
        rows = self.conn.execute(
            "SELECT clip_id, segment_id, relevant, mode, created_at FROM feedback f WHERE query=? AND id ="
            " (SELECT MAX(id) FROM feedback g WHERE g.query=f.query AND g.clip_id=f.clip_id)"
            " ORDER BY clip_id", (query,)).fetchall()
        return [dict(r, relevant=bool(r["relevant"])) for r in rows]

    def all_feedback(self) -> list[tuple[str, int, bool, str | None]]:
        """(query, clip id, relevant, label) of every judgement."""
        return [(r[0], r[1], bool(r[2]), r[3]) for r in
                self.conn.execute("SELECT query, clip_id, relevant, label FROM feedback")]

    # -- learning iterations -----------------------------------------------------------------------------
    def record_iteration(self, run: str, iteration: int, strategy: str, model: str | None, map_: float,
                         per_class: dict, extra: dict) -> None:
        self.conn.execute("INSERT OR REPLACE INTO iterations(run, iteration, strategy, model, map, per_class,"
                          " selected, created_at) VALUES(?,?,?,?,?,?,?,?)",
                          (run, iteration, strategy, model, map_, json.dumps(per_class), json.dumps(extra),
                           time.time()))

    def iterations(self, run: str | None = None, strategy: str | None = None) -> list[dict]:
        """Recorded learning iterations (per_class and selected decoded), by run, strategy, iteration."""
        sql = "SELECT id, run, iteration, strategy, model, map, per_class, selected, created_at FROM iterations"
        args: list = []
        if run is not None:
            sql += " WHERE run=? AND strategy=?"
            args = [run, strategy]
        out = []
        for r in self.conn.execute(sql + " ORDER BY run, strategy, iteration", args):
            d = dict(r)
            for key in ("per_class", "selected"):
                try:
                    d[key] = json.loads(d[key]) if d[key] else None
                except ValueError:
                    pass
            out.append(d)
        return out

    # -- admin jobs --------------------------------------------------------------------------------------
    @staticmethod
    def _job(r) -> dict:
        d = dict(r)
        for k in ("params", "result"):
            d[k] = json.loads(d[k]) if d.get(k) else ({} if k == "params" else None)
        return d

    def submit_job(self, kind: str, params: dict) -> int:
        with self.transaction() as c:
            job_id = self.dialect.insert_id(c, "INSERT INTO jobs(kind, params, status, created_at)"
                                            " VALUES(?, ?, 'queued', ?)", (kind, json.dumps(params), time.time()))
            c.execute("DELETE FROM jobs WHERE status IN ('done', 'failed') AND id NOT IN "
                      "(SELECT id FROM jobs ORDER BY id DESC LIMIT ?)", (MAX_KEPT_JOBS,))
        return job_id

    def jobs(self, limit: int = MAX_KEPT_JOBS) -> list[dict]:
        return [self._job(r) for r in self.conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def job(self, job_id: int) -> dict | None:
        r = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(r) if r is not None else None

    def running_jobs(self) -> list[tuple[int, int | None]]:
        """(job id, pid of the process running it)."""
        return [(r[0], r[1]) for r in self.conn.execute("SELECT id, pid FROM jobs WHERE status = 'running'")]

    def has_queued_jobs(self) -> bool:
        return self._one("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1") is not None

    def claim_job(self, pid: int) -> dict | None:
        """The oldest queued job, marked running by process `pid`; None when one is already running."""
        with self.transaction(serial=True) as c:
            if c.execute("SELECT 1 FROM jobs WHERE status = 'running' LIMIT 1").fetchone():
                return None
            r = c.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if r is None:
                return None
            now = time.time()
            c.execute("UPDATE jobs SET status = 'running', pid = ?, started_at = ? WHERE id = ?", (pid, now, r["id"]))
        job = self._job(r)
        job.update(status="running", started_at=now, pid=pid)
        return job

    def finish_job(self, job_id: int, status: str, result: dict | None = None, error: str | None = None,
                   only_if_running: bool = False) -> None:
        self.conn.execute("UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?"
                          + (" AND status = 'running'" if only_if_running else ""),
                          (status, time.time(), json.dumps(result) if result is not None else None, error, job_id))

    # -- weakly covered text queries (the vocabulary grows from them) -----------------------------------
    @property
    def query_log_file(self) -> Path | None:
        """The weak-query log's SQLite file, beside a SQLite catalogue (`<library>/nels.querylog.db`); None for
        PostgreSQL (where the log is the catalogue's table `query_log`)."""
        return None if isinstance(self.location, str) else self.location.with_suffix(".querylog.db")

    @property
    def _log(self):
        """This thread's connection to the weak-query log. SQLite: a file of its own, so that counting a query
        commits nothing to the catalogue: the web server's answer caches are keyed on the catalogue's
        `data_version`, and a site where many people type words NELS has no class for lost every cached answer
        at each such query. Every count is written at once (WAL), nothing is buffered. PostgreSQL: the
        catalogue itself (its data_version changes on any commit anywhere in the server anyway)."""
        if self.query_log_file is None:
            return self.conn
        c = getattr(self._local, "log_conn", None)
        if c is None:
            c = self.dialect.connect(self.query_log_file)
            try:
                for stmt in QUERY_LOG_SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                self._move_query_log(c)
            except BaseException:
                c.close()
                raise
            self._local.log_conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def _move_query_log(self, log) -> None:
        """Queries logged in the catalogue's own table (nels before the log had its file) move to the log file,
        added to what it counts, under the catalogue's write lock (several processes opening the library at once
        move them once). A crash between the log's commit and the catalogue's would count them twice, once."""
        if self.conn.execute("SELECT 1 FROM query_log LIMIT 1").fetchone() is None:
            return
        with self.transaction() as c:
            rows = [tuple(r) for r in c.execute("SELECT query, count, best_score, best_label, first_at, last_at,"
                                                " status FROM query_log").fetchall()]
            if not rows:  # another process moved them meanwhile
                return
            log.execute("BEGIN IMMEDIATE")
            try:
                log.executemany("INSERT INTO query_log(query, count, best_score, best_label, first_at, last_at,"
                                " status) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(query) DO UPDATE SET"
                                " count = count + excluded.count, first_at = MIN(first_at, excluded.first_at),"
                                " last_at = MAX(last_at, excluded.last_at)", rows)
                log.execute("COMMIT")
            except BaseException:
                log.execute("ROLLBACK")
                raise
            c.execute("DELETE FROM query_log")

    def log_weak_query(self, query: str, score: float, label: str | None, now: float | None = None) -> None:
        """Count one asking of a text query whose best class match was weak (score: the coverage signal)."""
        q = " ".join(query.split()).lower()
        if not q:
            return
        t = time.time() if now is None else now
        self._write("INSERT INTO query_log(query, count, best_score, best_label, first_at, last_at) "
                    "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT(query) DO UPDATE SET count = count + 1, "
                    "best_score = excluded.best_score, best_label = excluded.best_label, last_at = excluded.last_at",
                    (q, float(score), label, t, t), conn=self._log)

    def weak_queries(self, status: str | None = "open", limit: int = 100) -> list[dict]:
        """Logged weak queries, most asked first (status None: all)."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._log.execute(f"SELECT query, count, best_score, best_label, first_at, last_at, status "
                                 f"FROM query_log {where} ORDER BY count DESC, last_at DESC LIMIT ?",
                                 (*args, int(limit))).fetchall()
        return [dict(r) for r in rows]

    def set_query_status(self, query: str, status: str) -> bool:
        """Mark a logged query accepted or dismissed; False when it was never logged."""
        q = " ".join(query.split()).lower()
        return self._write("UPDATE query_log SET status = ? WHERE query = ?", (status, q), conn=self._log).rowcount > 0

    # == `nels run` (the unattended loop, nels/learn/run.py): steps, model versions, crawl queries, staged ======
    # == re-index. Everything the loop knows lives in these rows (and meta 'run.*'), so kill -9 loses nothing. ==
    def step_start(self, cycle: int, step: str) -> None:
        """Mark a step of a cycle running (again, after a crash: its detail so far is kept)."""
        self._write("INSERT INTO run_steps(cycle, step, status, started_at) VALUES (?, ?, 'running', ?) ON CONFLICT"
                    "(cycle, step) DO UPDATE SET status='running', finished_at=NULL", (cycle, step, time.time()))

    def step_finish(self, cycle: int, step: str, status: str, detail: dict | None = None) -> None:
        self._write("UPDATE run_steps SET status=?, detail=?, finished_at=? WHERE cycle=? AND step=?",
                    (status, json.dumps(detail, default=str) if detail is not None else None, time.time(), cycle, step))

    def step_detail(self, cycle: int, step: str) -> dict | None:
        """A step's row (status, detail decoded), or None when it never started."""
        r = self.conn.execute("SELECT * FROM run_steps WHERE cycle=? AND step=?", (cycle, step)).fetchone()
        return self._step(r) if r is not None else None

    @staticmethod
    def _step(r) -> dict:
        d = dict(r)
        d["detail"] = json.loads(d["detail"]) if d.get("detail") else None
        return d

    def run_steps(self, limit: int = 200) -> list[dict]:
        """The latest steps, newest first."""
        return [self._step(r) for r in self.conn.execute("SELECT * FROM run_steps ORDER BY id DESC LIMIT ?",
                                                         (int(limit),))]

    def add_model_version(self, name: str, path: str, parent: str | None, cycle: int | None, status: str,
                          map_: float | None, per_class: dict | None, detail: dict | None = None,
                          reason: str | None = None) -> None:
        """Record a model version (a re-made candidate of the same name replaces the old row)."""
        self._write("INSERT OR REPLACE INTO model_versions(name, path, parent, cycle, status, map, per_class, reason,"
                    " detail, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (name, path, parent, cycle, status, map_, json.dumps(per_class) if per_class is not None else None,
                     reason, json.dumps(detail, default=str) if detail is not None else None, time.time()))

    def set_version_status(self, name: str, status: str, reason: str | None = None) -> None:
        self._write("UPDATE model_versions SET status=?, reason=COALESCE(?, reason), decided_at=? WHERE name=?",
                    (status, reason, time.time(), name))

    @staticmethod
    def _version(r) -> dict:
        d = dict(r)
        for k in ("per_class", "detail"):
            d[k] = json.loads(d[k]) if d.get(k) else None
        return d

    def set_version_scores(self, name: str, map_: float | None, per_class: dict | None) -> None:
        """The held-out scores of a version (the seed version is measured at the first learning step)."""
        self._write("UPDATE model_versions SET map=?, per_class=? WHERE name=?",
                    (map_, json.dumps(per_class) if per_class is not None else None, name))

    def stage_current(self, target: str, clip_id: int) -> None:
        """Stage a clip's served encodings as they are (a clip the new model could not re-encode keeps its old
        ones rather than blocking the swap)."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO staged_vectors(target, space, segment_id, model, vec) SELECT ?, v.space,"
                      " v.segment_id, v.model, v.vec FROM vectors v JOIN segments s ON s.id=v.segment_id"
                      " WHERE s.clip_id=?", (target, clip_id))
            c.execute("INSERT OR REPLACE INTO staged_probs(target, segment_id, model, probs) SELECT ?, p.segment_id,"
                      " p.model, p.probs FROM probs p JOIN segments s ON s.id=p.segment_id WHERE s.clip_id=?",
                      (target, clip_id))
            c.execute("INSERT OR REPLACE INTO staged_labels(target, segment_id, label, prob) SELECT ?, l.segment_id,"
                      " l.label, l.prob FROM labels l JOIN segments s ON s.id=l.segment_id WHERE s.clip_id=?",
                      (target, clip_id))
            c.execute("INSERT OR IGNORE INTO staged_clips(target, clip_id) VALUES (?, ?)", (target, clip_id))

    def model_versions(self, status: str | None = None) -> list[dict]:
        """Model versions, oldest first (status: only those)."""
        where, args = ("WHERE status=?", (status,)) if status else ("", ())
        return [self._version(r) for r in self.conn.execute(
            f"SELECT * FROM model_versions {where} ORDER BY created_at, rowid", args)]

    def model_version(self, name: str) -> dict | None:
        r = self.conn.execute("SELECT * FROM model_versions WHERE name=?", (name,)).fetchone()
        return self._version(r) if r is not None else None

    def add_crawl_query(self, query: str, label: str, origin: str) -> None:
        """A query the planner crawls for `label` (origin: name | synonym | description | vocabulary | user)."""
        self._write("INSERT OR IGNORE INTO crawl_queries(query, label, origin) VALUES (?,?,?)", (query, label, origin))

    def crawl_queries(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM crawl_queries ORDER BY label, query")]

    def note_crawl(self, query: str, found: int) -> None:
        """One more run of `query`, which listed `found` results (the most it ever listed is kept)."""
        self._write("UPDATE crawl_queries SET runs=runs+1, found=MAX(found, ?), last_at=? WHERE query=?",
                    (int(found), time.time(), query))

    def clips_by_query(self) -> dict[str, list[int]]:
        """query -> ids of the clips it found (the crawl pool of each planned query)."""
        out: dict[str, list[int]] = {}
        for q, cid in self.conn.execute("SELECT c.query, c.id FROM clips c JOIN crawl_queries q ON q.query=c.query"
                                        " ORDER BY c.id"):
            out.setdefault(q, []).append(cid)
        return out

    def audio_seconds(self) -> float:
        """Seconds of audio in the library."""
        return float(self._one("SELECT COALESCE(SUM(duration), 0) FROM clips") or 0.0)

    def pending_crawl_items(self, retries: int, now: float | None = None) -> list[sqlite3.Row]:
        """Crawled (yt-dlp) items still to fetch: pending, or failed with attempts left and backoff over."""
        now = time.time() if now is None else now
        return self.conn.execute("SELECT * FROM items WHERE kind='ytdlp' AND (status='pending' OR (status='failed'"
                                 " AND attempts < ? AND next_attempt_at <= ?)) ORDER BY id", (retries, now)).fetchall()

    def generation(self) -> int:
        """Bumped by every swap of staged encodings: a process that cached models or matrices re-reads them."""
        return int(self.get_meta("generation", 0) or 0)

    def staged_clip_ids(self, target: str) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT clip_id FROM staged_clips WHERE target=?", (target,))}

    def stage_encodings(self, target: str, clip_id: int, vectors: dict, probs) -> None:
        """Keep a clip's encodings by the model `target` aside (served ones untouched) until `swap_staged`."""
        seg_ids = self.segment_ids(clip_id)
        with self.transaction() as c:
            for space, (model, vecs) in vectors.items():
                vecs = _finite(np.asarray(vecs, dtype=np.float32), f"{space} vectors")
                c.executemany("INSERT OR REPLACE INTO staged_vectors(target, space, segment_id, model, vec)"
                              " VALUES (?,?,?,?,?)", [(target, space, sid, model, vecs[i].tobytes())
                                                      for i, sid in enumerate(seg_ids)])
            for model, labels, p in ([] if probs is None else [probs] if isinstance(probs, tuple) else probs):
                p = _finite(np.asarray(p, dtype=np.float32), f"{model} class probabilities")
                self.register_model(model, "classifier", None, labels)
                c.executemany("INSERT OR REPLACE INTO staged_probs(target, segment_id, model, probs) VALUES (?,?,?,?)",
                              [(target, sid, model, p[i].tobytes()) for i, sid in enumerate(seg_ids)])
                c.executemany("INSERT INTO staged_labels(target, segment_id, label, prob) VALUES (?,?,?,?) ON CONFLICT"
                              "(target, segment_id, label) DO UPDATE SET prob=MAX(prob, excluded.prob)",
                              [(target, sid, labels[j], float(p[i, j])) for i, sid in enumerate(seg_ids)
                               for j in np.argsort(-p[i])[:TOP_LABELS]])
            c.execute("INSERT OR IGNORE INTO staged_clips(target, clip_id) VALUES (?, ?)", (target, clip_id))

    def swap_staged(self, target: str, meta: dict, promote: str | None = None) -> bool:
        """In one transaction: the staged encodings of `target` replace every served vector, probability and
        label, `meta` is set, the generation bumped, version `promote` becomes the serving one (the serving one
        retired). False (nothing changed) when some clip has no staged encodings yet (added meanwhile)."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM clips WHERE id NOT IN (SELECT clip_id FROM staged_clips WHERE target=?)"
                         " LIMIT 1", (target,)).fetchone():
                return False
            c.execute("DELETE FROM vectors")
            c.execute("INSERT INTO vectors(space, segment_id, model, vec) SELECT space, segment_id, model, vec"
                      " FROM staged_vectors WHERE target=?", (target,))
            c.execute("DELETE FROM probs")
            c.execute("INSERT INTO probs(segment_id, model, probs) SELECT segment_id, model, probs FROM staged_probs"
                      " WHERE target=?", (target,))
            c.execute("DELETE FROM labels")
            c.execute("INSERT INTO labels(segment_id, label, prob) SELECT segment_id, label, prob FROM staged_labels"
                      " WHERE target=?", (target,))
            for key, value in {**meta, "generation": self.generation() + 1}.items():
                self.set_meta(key, value)
            if promote is not None:
                now = time.time()
                c.execute("UPDATE model_versions SET status='retired', decided_at=? WHERE status='serving'", (now,))
                c.execute("UPDATE model_versions SET status='serving', decided_at=? WHERE name=?", (now, promote))
            self.drop_staged(target)
        return True

    def drop_staged(self, target: str | None = None) -> None:
        """Forget staged encodings (of `target`; None: of every target)."""
        for table in ("staged_vectors", "staged_probs", "staged_labels", "staged_clips"):
            if target is None:
                self._write(f"DELETE FROM {table}")
            else:
                self._write(f"DELETE FROM {table} WHERE target=?", (target,))
