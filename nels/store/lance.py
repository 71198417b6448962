"""`LanceStore` ("lance"): a space's vectors in a LanceDB table, on a local disk or on object storage.

One table per embedding space, `<library>/indexes/<space>.lance` (a Lance dataset: columnar files plus
versioned manifests, so every write is one atomic commit and a reader always sees a whole version), with the
columns `id` (the segment id, int64) and `vector` (fixed-size list of float32); the catalogue's model of the
vectors is kept in the table's schema metadata (`nels.model`), written in the same commit as the vectors.
Searches are inner-product ("dot") k-NN:

* below `hnsw_threshold` vectors (the library's setting, 50k by default) exact: Lance scans every vector;
* from there on an ANN index (`config.LANCE_INDEX`: IVF-HNSW-SQ or IVF-PQ, chosen by bench/bench_vectors.py),
  built once when the table crosses the threshold and retrained when it has grown `LANCE_RETRAIN_GROWTH`
  times since; vectors appended after a build are searched exactly beside the index until they exceed
  `LANCE_UNINDEXED_FRACTION` of it, when `optimize` merges them in (no retraining).

Deletes are Lance deletion vectors (no rebuild, searches in flight unaffected); `flush` compacts small
fragments and drops versions older than `LANCE_KEEP_VERSIONS_MINUTES`. `path` may be any URI LanceDB opens
(`s3://bucket/prefix/indexes/cnn`, `gs://`, `az://`, a local path); S3 credentials and endpoint come from the
usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL) or `storage_options`.

Several processes (`nels serve --workers N`, several ingests) may sync the same table: appends in `sync` are
`merge_insert` on the id (a vector already there is not added twice) and every full sync first reads the
newest version.
"""
from __future__ import annotations

import os
import posixpath
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from nels.config import (HNSW_THRESHOLD, LANCE_INDEX, LANCE_KEEP_VERSIONS_MINUTES, LANCE_NPROBES, LANCE_REFINE,
                         LANCE_RETRAIN_GROWTH, LANCE_UNINDEXED_FRACTION)
from nels.errors import LibraryError, disk_error

MODEL_KEY = b"nels.model"
MIN_INDEX_ROWS = 256  # an IVF/PQ index trains on at least this many vectors (its k-means needs them)
DELETE_CHUNK = 5000  # ids per DELETE predicate
COMMIT_RETRIES = 8  # a sync that lost a commit race to another process re-reads and tries again
SMALL_FRAGMENTS = 16  # `flush` compacts when the table has more small fragments than this


def _lancedb():
    import lancedb

    return lancedb


def _pa():
    import pyarrow as pa

    return pa


def is_uri(path) -> bool:
    """True for 's3://...', 'gs://...', 'memory://' (anything with a scheme other than file://)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def storage_options_from_env() -> dict[str, str]:
    """LanceDB's object-store options from the AWS variables that boto3/s3fs also read (an S3-compatible
    server elsewhere than AWS: AWS_ENDPOINT_URL; plain http is allowed for it)."""
    opts = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    return opts


class LanceStore:
    """A LanceDB table of one space's vectors keyed by segment id (see the module docstring)."""

    suffix = ".lance"
    object_storage = True  # a library on object storage keeps these tables there (nels.store.library)

    def __init__(self, dim: int, path: str | os.PathLike | None = None, hnsw_threshold: int = HNSW_THRESHOLD,
                 index_type: str = LANCE_INDEX, nprobes: int = LANCE_NPROBES, refine_factor: int = LANCE_REFINE,
                 ef: int = 0, storage_options: dict | None = None, mirror: str | os.PathLike | None = None):
        self.dim = int(dim)
        self.path = path
        self.hnsw_threshold, self.index_type = int(hnsw_threshold), index_type.upper()
        self.nprobes, self.refine_factor, self.ef = int(nprobes), int(refine_factor), int(ef)
        if path is None:
            db_uri, self.name = "memory://", "vectors"
        else:
            s = str(path)
            if s.endswith(self.suffix):
                s = s[: -len(self.suffix)]
            if is_uri(s):
                db_uri, self.name = posixpath.split(s.rstrip("/"))
            else:
                p = Path(s).expanduser()
                db_uri, self.name = str(p.parent), p.name
                p.parent.mkdir(parents=True, exist_ok=True)
        self.uri = db_uri
        options = dict(storage_options_from_env() if is_uri(db_uri) and db_uri != "memory://" else {})
        options.update(storage_options or {})
        self.db = _lancedb().connect(db_uri, storage_options=options or None)
        self.table = None  # None: no usable table yet (the first write creates it, replacing any other)
        # a table on object storage is searched in a local copy of its (immutable) files: a search there
        # would make ~8 ranged GETs to the bucket (bench/RESULTS.md); writes still go to the bucket
        self.mirror = Path(mirror).expanduser() if mirror is not None and is_uri(db_uri) and db_uri != "memory://" \
            else None
        self._storage_options = options
        self._reader = None  # the mirror's table
        self.max_id = -1
        self.model = None
        self.trained_rows = 0  # rows the ANN index was trained on (0: no index)
        self._lock = threading.RLock()  # one writer at a time in this process
        self._seen_version = None

    @classmethod
    def open(cls, path: str | os.PathLike | None, dim: int, *, hnsw_threshold: int = HNSW_THRESHOLD,
             lance_index: str = LANCE_INDEX, lance_nprobes: int = LANCE_NPROBES, lance_refine: int = LANCE_REFINE,
             lance_ef: int = 0, storage_options: dict | None = None, mirror: str | os.PathLike | None = None,
             **_other_backends) -> LanceStore:
        """The table `<path>.lance` (path may be an object-storage URI), or an empty store when there is none,
        it cannot be read or its vectors have another dim (the first write then replaces it). mirror: where a
        table on object storage is copied for searching (`<mirror>.lance`, a local path); ignored for a local one."""
        store = cls(dim, path, hnsw_threshold, lance_index, lance_nprobes, lance_refine, lance_ef, storage_options,
                    mirror)
        store.load()
        return store

    # -- state --------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Open the table; False (and the store empty) when it is missing, unreadable or of another dim."""
        try:
            table = self.db.open_table(self.name)
            vtype = table.schema.field("vector").type
        except Exception:  # missing, unreadable, not ours: sync refills it
            return False
        if getattr(vtype, "list_size", None) != self.dim or "id" not in table.schema.names:
            return False
        with self._lock:
            self.table = table
            self._refresh(force=True)
        return True

    def _refresh(self, force: bool = False) -> None:
        """Re-read what another process may have changed: the newest version, its model, max id and index."""
        t = self.table
        if t is None:
            return
        if not force:
            t.checkout_latest()
        version = t.version
        if version == self._seen_version and not force:
            return
        meta = t.schema.metadata or {}
        self.model = meta[MODEL_KEY].decode() if MODEL_KEY in meta else None
        ids = t.search(None).select(["id"]).limit(None).to_arrow().column("id") if t.count_rows() else None
        self.max_id = int(_pa().compute.max(ids).as_py()) if ids is not None and len(ids) else -1
        self.trained_rows = self._index_rows()[0] if self._has_index() else 0
        self._seen_version = version
        self._update_mirror()

    def _update_mirror(self) -> None:
        """Copy the table's files that the local mirror lacks (Lance never rewrites a file: data, deletion,
        index and versioned manifest files are all new files), then search the mirror's newest version."""
        if self.mirror is None or self.table is None:
            return
        import fsspec

        remote = f"{self.uri.rstrip('/')}/{self.name}{self.suffix}"
        local = self.mirror.with_name(self.mirror.name + self.suffix)
        fs, root = fsspec.core.url_to_fs(remote)
        for f in fs.find(root):
            dest = local / f[len(root):].lstrip("/")
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            fs.get_file(f, str(tmp))
            os.replace(tmp, dest)
        if self._reader is None:
            self._reader = _lancedb().connect(str(local.parent)).open_table(self.name)
        else:
            self._reader.checkout_latest()

    def _written_here(self) -> None:
        """After a write of this process: note the version, bring the mirror up to date."""
        self._seen_version = self.table.version
        self._update_mirror()

    def _has_index(self) -> bool:
        return self.table is not None and any("vector" in i.columns for i in self.table.list_indices())

    def _index_rows(self) -> tuple[int, int]:
        """(indexed, unindexed) rows of the vector index."""
        name = next(i.name for i in self.table.list_indices() if "vector" in i.columns)
        st = self.table.index_stats(name)
        return int(st.num_indexed_rows), int(st.num_unindexed_rows)

    @property
    def kind(self) -> str:
        """"exact" (no ANN index yet) or the index type ("ivf_hnsw_sq", "ivf_pq")."""
        return self.index_type.lower() if self._has_index() else "exact"

    # -- writing ----------------------------------------------------------------------------------------------
    def _schema(self, model: str | None):
        pa = _pa()
        return pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), self.dim))],
                         metadata={MODEL_KEY: model.encode()} if model is not None else None)

    def _batch(self, ids: np.ndarray, vecs: np.ndarray, schema):
        pa = _pa()
        flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
        return pa.record_batch([pa.array(ids, pa.int64()), pa.FixedSizeListArray.from_arrays(flat, self.dim)],
                               schema=schema)

    def _check(self, ids, vecs) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.size != len(ids) * self.dim:
            raise ValueError(f"{len(ids)} ids but vectors of shape {vecs.shape} (dim {self.dim})")
        return ids, vecs.reshape(len(ids), self.dim)

    def _written(self, what: str):
        """Wrap a write: a storage failure becomes the library's disk error (the table is a cache)."""
        store = self

        class _Guard:
            def __enter__(self):
                return self

            def __exit__(self, exc_type, exc, tb):
                if exc is not None and isinstance(exc, OSError):
                    raise disk_error(exc, f"cannot {what} the vector table {store.name} (it is a cache: the catalogue"
                                          f" keeps every vector, and the next open rebuilds it)") from exc
                return False

        return _Guard()

    def _replace(self, batches, model: str | None) -> None:
        """Replace the whole table with `batches` (an iterable of record batches) in one commit."""
        schema = self._schema(model)
        batches = list(batches) if isinstance(batches, list) else batches
        with self._written("write"):
            self.table = self.db.create_table(self.name, data=batches or None, schema=schema, mode="overwrite")
        self.model, self.trained_rows, self._seen_version = model, 0, None

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        ids, vecs = self._check(ids, vecs)
        if not len(ids):
            return
        with self._lock:
            if self.table is None:
                self._replace([self._batch(ids, vecs, self._schema(None))], None)
            else:
                with self._written("append to"):
                    self.table.add(self._batch(ids, vecs, self.table.schema))
            self.max_id = max(self.max_id, int(ids.max()))
            self._maintain_index()
            self._written_here()

    def _append_new(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Append rows whose ids the table lacks (another process may have appended them already)."""
        data = _pa().Table.from_batches([self._batch(ids, vecs, self.table.schema)])
        with self._written("append to"):
            self.table.merge_insert("id").when_not_matched_insert_all().execute(data)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not ids.size or self.table is None:
            return
        with self._lock:
            for start in range(0, len(ids), DELETE_CHUNK):
                chunk = ids[start:start + DELETE_CHUNK]
                with self._written("delete from"):
                    self.table.delete(f"id IN ({','.join(map(str, chunk.tolist()))})")
            if self.max_id in set(ids.tolist()):
                self._seen_version = None
                self._refresh(force=True)
            else:
                self._written_here()

    def _maintain_index(self) -> None:
        """Build the ANN index when the table crosses the threshold, merge appended rows into it when they
        are many, retrain it when the table has grown LANCE_RETRAIN_GROWTH times (caller holds self._lock)."""
        n = self.table.count_rows()
        if n < max(self.hnsw_threshold, MIN_INDEX_ROWS):
            return
        if not self._has_index() or n >= LANCE_RETRAIN_GROWTH * max(self.trained_rows, 1):
            self.build_index()
            return
        indexed, unindexed = self._index_rows()
        if unindexed > LANCE_UNINDEXED_FRACTION * max(indexed, 1):
            with self._written("index"):
                self.table.optimize()
            self._written_here()

    def build_index(self) -> None:
        """(Re)train the ANN index over every row: IVF (Lance's partition size for the index type), then PQ
        (dim/4 sub-vectors) or HNSW over scalar-quantised vectors inside each partition; searches re-rank
        `refine_factor` x k candidates on the exact vectors."""
        from lancedb.index import HnswSq, IvfPq

        with self._lock:
            n = self.table.count_rows()
            if self.index_type == "IVF_PQ":
                sub = next(s for s in (self.dim // 4, self.dim // 8, self.dim // 2, 1) if s and self.dim % s == 0)
                config = IvfPq(distance_type="dot", num_sub_vectors=sub)
            elif self.index_type == "IVF_HNSW_SQ":
                config = HnswSq(distance_type="dot")
            else:
                raise LibraryError(f"unknown Lance index type '{self.index_type}' (IVF_PQ or IVF_HNSW_SQ)")
            with self._written("index"):
                self.table.create_index("vector", config=config, replace=True)
            self.trained_rows = n
            self._written_here()

    # -- reading --------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(int(k), 0)
        scores = np.full((len(q), k), -np.inf, np.float32)
        found = np.full((len(q), k), -1, np.int64)
        table = self._reader if self._reader is not None else self.table
        if not len(q) or not k or table is None:
            return scores, found
        query = table.search(q if len(q) > 1 else q[0], vector_column_name="vector").distance_type("dot").limit(k)
        if self.trained_rows:
            query = query.nprobes(self.nprobes)
            # quantised scores are approximate: re-rank refine_factor x k candidates on the exact vectors
            query = query.refine_factor(max(self.refine_factor, 1))
            if self.ef:
                query = query.ef(self.ef)
        res = query.select(["id"]).to_arrow()
        ids = res.column("id").to_numpy()
        sc = 1.0 - res.column("_distance").to_numpy().astype(np.float32)  # Lance's "dot" distance is 1 - q.v
        rows = res.column("query_index").to_numpy() if "query_index" in res.column_names else np.zeros(len(ids), int)
        for r in range(len(q)):
            m = rows == r
            order = np.argsort(-sc[m], kind="stable")[:k]
            scores[r, :len(order)] = sc[m][order]
            found[r, :len(order)] = ids[m][order]
        return scores, found

    def count(self) -> int:
        t = self.table
        return int(t.count_rows()) if t is not None else 0

    def __len__(self) -> int:
        return self.count()

    # -- persistence ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Every write is already a committed Lance version; this compacts many small fragments (appends of
        a few clips each) and removes versions older than LANCE_KEEP_VERSIONS_MINUTES (readers of another
        process may still be on a recent one)."""
        if self.path is None or self.table is None:
            return
        with self._lock:
            stats = self.table.stats()
            if stats["fragment_stats"]["num_small_fragments"] > SMALL_FRAGMENTS:
                with self._written("compact"):
                    self.table.optimize(cleanup_older_than=timedelta(minutes=LANCE_KEEP_VERSIONS_MINUTES))
                self._written_here()

    def save(self) -> None:
        self.flush()

    # -- catalogue sync ----------------------------------------------------------------------------------------
    def sync(self, catalogue, space: str, full: bool = True) -> bool:
        """Make the table hold exactly the catalogue's vectors of `space`; True if it changed (the same
        contract as FaissStore.sync: full=False only looks for new vectors). Two processes syncing at once may
        collide on Lance's commit ("Retryable commit conflict"): the loser re-reads the table and syncs again
        (each sync is idempotent: appends skip ids already there, a rewrite copies the catalogue)."""
        for attempt in range(COMMIT_RETRIES):
            try:
                return self._sync_once(catalogue, space, full)
            except Exception as exc:  # noqa: BLE001 - only Lance's retryable conflicts are retried
                if "commit conflict" not in str(exc).lower() or attempt == COMMIT_RETRIES - 1:
                    raise
                with self._lock:
                    self._seen_version = None
                    self._refresh()
                time.sleep(0.02 * (attempt + 1))  # back off before re-reading the winner's commit
        return False

    def _sync_once(self, catalogue, space: str, full: bool) -> bool:
        if not full and catalogue.newest_vector_id(space) == self.max_id:
            return False
        count, max_id, model = catalogue.vector_summary(space)
        with self._lock:
            if self.table is not None:
                self._refresh()  # another process may have written
            n = self.count()
            if count == n and max_id == self.max_id and model == self.model:
                return False
            if (self.table is not None and model == self.model
                    and catalogue.count_vectors_upto(space, self.max_id) == n):
                top = self.max_id  # only new vectors: append them
                for ids, vecs in catalogue.iter_vectors(space, after_id=top):
                    self._check_dim(vecs, space)
                    self._append_new(ids, vecs)
                    top = max(top, int(ids.max()))
                self.max_id = top
            else:  # removals, a crash or a new model left them apart: rewrite the table in one commit
                schema = self._schema(model)
                top = [-1]

                def batches():
                    for ids, vecs in catalogue.iter_vectors(space):
                        self._check_dim(vecs, space)
                        top[0] = max(top[0], int(ids.max()))
                        yield self._batch(ids, vecs, schema)

                self._replace(batches() if count else [], model)
                self.max_id = top[0]
            self._maintain_index()
            self._written_here()
        return True

    def _check_dim(self, vecs: np.ndarray, space: str) -> None:
        if vecs.shape[-1] != self.dim:
            raise LibraryError(f"the catalogue's '{space}' vectors have dim {vecs.shape[-1]}, its index {self.dim}")
