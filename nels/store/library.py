"""`Library`: the one Python API over a library folder, used by the CLI, the website and the loop.

    library/
      nels.db          SQLite (WAL): items (crawl state), clips, segments, vectors, labels, models...
      nels.querylog.db the weak-query log (its own file: counting a query does not touch nels.db's data_version)
      media/           the audio files, named by content hash (clips kept in place, `nels ingest --in-place`,
                       are the user's own files instead: the catalogue has their absolute path, size and time)
      indexes/         <space>.faiss + <space>.json, derived from nels.db and re-synced on open
      catalogue.json   instead of nels.db: where the library's PostgreSQL catalogue is (its URL, no password)

A library may live on object storage (`Library("s3://bucket/prefix")`, `nels/store/objectstore.py`): its media
and lance vector tables there, its catalogue and caches in a local folder keyed by the URI (`self.path`).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat as statmod
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nels.config import CATALOGUE, HNSW_THRESHOLD, VECTOR_STORE
from nels.errors import LibraryError, disk_error
from nels.store.catalogue import Catalogue
from nels.store.dialect import is_postgres, without_password
from nels.store.objectstore import MediaFiles, is_media_path, remember, resolve
from nels.store.vectors import STORES, VectorStore, open_store


@dataclass
class ClipRecord:
    """Everything one clip contributes, written in one transaction by `Library.add_clip`."""

    content_hash: str
    media_file: Path  # a local file to move/copy into media/ (or, kept in place, to reference)
    duration: float
    provenance: dict[str, Any]  # source_uri, source_kind, title, uploader, licence, query, webpage_url, fetched_at
    starts: np.ndarray  # (n,) seconds
    ends: np.ndarray  # (n,)
    vectors: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # space -> (model name, (n, dim))
    probs: tuple[str, list[str], np.ndarray] | None = None  # (model name, labels, (n, C))
    move_media: bool = False  # True for downloads (a temp file we own), False for a user's file
    media_ext: str | None = None  # the extension of the format the decoder found (None: a safe guess)
    original: tuple[int, int] | None = None  # kept in place: (size, mtime_ns) of media_file when it was hashed


def content_hash(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (hex): a clip's identity, and how an original kept in place is verified."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_state(path: str | os.PathLike) -> tuple[int, int]:
    """(size, mtime_ns) of a file: what tells, without reading it, that an original kept in place changed."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def is_in_place(media_path: str) -> bool:
    """Whether a catalogue media path is an original kept in place (absolute) rather than a file in media/."""
    return os.path.isabs(media_path)


class MediaUnavailable(LibraryError):
    """A clip's media cannot be read now. `reason`: missing (an original kept in place was moved or deleted),
    changed (its content is no longer what was indexed), unregistered (an absolute path that is no clip's
    original) or outside (a stored path that leaves the library's media folder)."""

    def __init__(self, message: str, media_path: str, reason: str, clip_id: int | None = None):
        super().__init__(message)
        self.media_path, self.reason, self.clip_id = media_path, reason, clip_id


# stored media keep the extension of the format decoded; anything else is stored as .bin (served as a download)
MEDIA_EXTENSIONS = {".wav", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mka", ".webm", ".aac", ".aiff",
                    ".aif", ".caf", ".amr", ".wma", ".avi", ".au", ".wv", ".ape", ".tta", ".voc", ".mpg", ".3gp",
                    ".mp4", ".mkv", ".mov", ".bin"}


def media_extension(rec: ClipRecord) -> str:
    """The extension a clip's media file is stored under: the decoded format's, else a known audio suffix of
    the file, else .bin (never a name such as .html or .svg that a browser would render)."""
    for ext in (rec.media_ext, rec.media_file.suffix.lower()):
        if ext and ext.lower() in MEDIA_EXTENSIONS:
            return ext.lower()
    return ".bin"


CATALOGUE_POINTER = "catalogue.json"  # in a library folder whose catalogue is on a PostgreSQL server


def catalogue_location(folder: str | os.PathLike, given: str | None = None) -> str | Path:
    """Where the catalogue of the library in `folder` is: `given` (`--catalogue`), else $NELS_CATALOGUE, else
    the PostgreSQL URL the folder recorded when it was made (catalogue.json; the password comes from
    $PGPASSWORD or ~/.pgpass), else `folder/nels.db`. A URL is returned as it is, a file as a resolved Path."""
    folder = Path(folder).expanduser().resolve()
    loc = given or CATALOGUE.get()
    pointer = folder / CATALOGUE_POINTER
    if not loc and pointer.exists():
        try:
            loc = json.loads(pointer.read_text())["uri"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LibraryError(f"{pointer} is damaged ({exc}): it should say {{\"uri\": \"postgresql://...\"}}") from exc
    if not loc:
        return folder / "nels.db"
    return loc if is_postgres(loc) else Path(loc).expanduser().resolve()


class Library:
    """A library folder: the catalogue (`nels.store.catalogue`), the vector indexes and the media files.
    `catalogue`: a `postgresql://` URL or a SQLite file (see `catalogue_location`; default `path/nels.db`).
    `create=False` refuses a folder that holds no library (LibraryError)."""

    def __init__(self, path: str | os.PathLike, create: bool = True, hnsw_threshold: int = HNSW_THRESHOLD,
                 catalogue: str | None = None):
        # a folder, or an object-storage URI (self.uri) whose catalogue and caches live in a local folder
        self.path, self.uri = resolve(path)
        self.location = self.uri or str(self.path)  # what opens this library again
        self.media = MediaFiles(self.path, self.uri)
        location = catalogue_location(self.path, catalogue)
        if isinstance(location, Path):
            if not location.exists() and not create:
                raise LibraryError(f"no library at {self.location} (create one with 'nels ingest' or pass --library DIR)"
                                   + (f"; its catalogue would be {location}" if self.uri else ""))
            self.path.mkdir(parents=True, exist_ok=True)
            self.catalogue = Catalogue(location)
        else:
            if (self.path / "nels.db").exists():
                raise LibraryError(f"the library at {self.path} has its own catalogue (nels.db), not"
                                   f" {without_password(location)}: unset NELS_CATALOGUE or drop --catalogue")
            self.catalogue = Catalogue(location, create=create)  # refuses an empty database when create=False
            self.path.mkdir(parents=True, exist_ok=True)  # media and index caches of this machine
            pointer = self.path / CATALOGUE_POINTER
            if not pointer.exists():  # later commands in this folder find the catalogue without --catalogue
                tmp = pointer.with_suffix(f".{os.getpid()}.part")
                tmp.write_text(json.dumps({"uri": without_password(location)}) + "\n")
                os.replace(tmp, pointer)
        if self.uri:
            remember(self.path, self.uri)  # opening the local folder (serve's workers, admin jobs) opens the URI
        (self.path / "media").mkdir(exist_ok=True)
        (self.path / "indexes").mkdir(exist_ok=True)
        self.hnsw_threshold = hnsw_threshold
        self._lock = threading.RLock()
        self._stores: dict[str, VectorStore] = {}
        self._memo: dict[str, Any] = {}
        self._generation = self.catalogue.generation()
        self._verdicts: dict[tuple, str] = {}  # (original, size, mtime_ns, expected hash) -> verdict after a re-hash

    @property
    def conn(self):
        """The catalogue's connection of this thread (SQLite, or PostgreSQL through the same `?` SQL), for tests
        and one-off scripts (NELS's own code goes through `self.catalogue`)."""
        return self.catalogue.conn

    def close(self) -> None:
        self.catalogue.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.save_indexes()
        except Exception:
            if exc_type is None:  # never hide the error that ended the block (a full disk) behind this one
                raise
        finally:
            self.close()

    # -- per-library memo (models and matrices loaded once per Library object) ----------------------------
    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """The value remembered under `key`, made by `make()` the first time (the library's encoder, its
        joint model, derived matrices). `forget()` drops them all (after a re-index or a removal)."""
        self._follow_swaps()
        try:
            return self._memo[key]
        except KeyError:
            v = self._memo[key] = make()
            return v

    def _follow_swaps(self) -> None:
        """After another process swapped in a re-index (`nels run`: Catalogue.swap_staged bumps the generation),
        forget the models, matrices and indexes loaded before it: the next search reads the new ones."""
        gen = self.catalogue.generation()
        if gen != self._generation:
            with self._lock:
                self._memo.clear()
                self._stores.clear()
                self._generation = gen

    def remembered(self, key: str, default=None):
        return self._memo.get(key, default)

    def remember(self, key: str, value) -> None:
        self._memo[key] = value

    def forget(self) -> None:
        self._memo.clear()

    # -- settings --------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        return self.catalogue.get_meta(key, default)

    def set_meta(self, key: str, value) -> None:
        self.catalogue.set_meta(key, value)

    # -- writing ---------------------------------------------------------------------------------
    def clip_by_hash(self, content_hash: str) -> int | None:
        return self.catalogue.clip_by_hash(content_hash)

    def add_clip(self, rec: ClipRecord, item_id: int | None = None) -> int:
        """`store_clip`, returning only the clip id (the existing one when this content is already stored)."""
        return self.store_clip(rec, item_id)[0]

    def store_clip(self, rec: ClipRecord, item_id: int | None = None) -> tuple[int, bool]:
        """Store a clip with its segments, vectors, probabilities and labels: all of it or nothing, with
        its crawl item (`item_id`) marked done in the same transaction.

        The media file is placed first (named by hash, so a re-run overwrites the same name); a crash
        before COMMIT leaves at most an orphan media file. Returns (clip id, added): the existing id and
        False when this content is already stored (by this or another process).
        """
        existing = self.catalogue.clip_by_hash(rec.content_hash)
        placed = None
        if existing is None and rec.original is not None:  # kept in place: the user's file is referenced
            rel = os.path.realpath(rec.media_file)
        elif existing is None:
            rel = f"media/{rec.content_hash[:2]}/{rec.content_hash}{media_extension(rec)}"
            if not self.media.exists(rel):
                try:
                    self.media.put(rec.media_file, rel, move=rec.move_media)  # a temp file + rename, or one PUT
                except OSError as exc:
                    raise disk_error(exc, f"cannot store the media of {rec.provenance.get('source_uri')}") from exc
                placed = rel
        else:
            rel = ""
        try:
            return self.catalogue.add_clip(rec.content_hash, rel, rec.duration, rec.provenance, rec.starts, rec.ends,
                                           rec.vectors, rec.probs, item_id, original=rec.original)
        except BaseException:
            if placed is not None and not self.catalogue.media_in_use(rel):  # not committed: no orphan file
                self.media.delete(rel)
            raise

    def replace_encodings(self, clip_id: int, vectors, probs, drop_spaces: Sequence[str] = ()) -> None:
        """Re-index one clip with another model (same segments), atomically."""
        self.catalogue.replace_encodings(clip_id, vectors, probs, drop_spaces)

    def remove_clips(self, clip_ids: Sequence[int]) -> int:
        """Delete clips (segments, vectors, labels cascade) and their media: the files in media/, never an
        original kept in place (the user's file). Returns how many existed."""
        removed = []
        for cid in clip_ids:
            gone = self.catalogue.remove_clip(int(cid))
            if gone is None:
                continue
            media_path, seg_ids = gone
            removed.append(int(cid))
            for store in self._stores.values():
                store.remove(np.asarray(seg_ids, dtype=np.int64))
            if media_path and is_media_path(media_path) and not self.catalogue.media_in_use(media_path):
                self.media.delete(media_path)
        self.forget()
        return len(removed)

    # -- vector indexes ----------------------------------------------------------------------------
    def spaces(self) -> list[str]:
        return self.catalogue.spaces()

    def store(self, space: str) -> VectorStore:
        """The synced vector index of `space` (loaded from disk, caught up with the catalogue)."""
        self._follow_swaps()
        with self._lock:
            st = self._stores.get(space)
            if st is None:
                dim = self.catalogue.vector_dim(space)
                if dim is None:
                    raise LibraryError(f"the library has no '{space}' vectors")
                # the store a library was made with stays its store ($NELS_VECTOR_STORE chooses for new ones)
                kind = self.catalogue.get_meta("vector_store")
                if kind is None:  # on object storage the vectors go beside the media unless said otherwise
                    kind = "lance" if self.uri and not os.environ.get(VECTOR_STORE.env) else VECTOR_STORE.get()
                    self.catalogue.set_meta("vector_store", kind)
                # a store that can live on object storage does so with the media; others stay local caches
                remote = self.uri and getattr(STORES.get(kind), "object_storage", False)
                where = f"{self.uri}/indexes/{space}" if remote else self.path / "indexes" / space
                st = open_store(kind, where, dim, hnsw_threshold=self.hnsw_threshold,
                                mirror=self.path / "indexes" / space)  # where a remote store may copy itself
                self._stores[space] = st
                full = True  # first use: catch anything (removals, a crash) since the file was written
            else:
                full = False  # later: new vectors only; this object's own removals update the index directly
            if st.sync(self.catalogue, space, full=full):
                try:
                    st.save()
                except LibraryError:  # the index is a cache: searching goes on; save_indexes() says why
                    pass
            return st

    def save_indexes(self) -> None:
        for space in self.spaces():
            st = self.store(space)  # sync + save when behind
            if st.sync(self.catalogue, space, full=True):
                st.save()

    # -- reading -------------------------------------------------------------------------------------
    def segment_rows(self, seg_ids: Sequence[int]) -> dict[int, dict]:
        """segment id -> its clip's fields, start/end and top labels."""
        return self.catalogue.segment_rows(seg_ids)

    def clip(self, clip_id: int) -> dict | None:
        return self.catalogue.clip(clip_id)

    def prob_matrix(self, model: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str], str] | None:
        """(segment ids, probs (n, C), labels, model) of one classifier (None: the first) over the whole
        library, cached until it changes."""
        mats = self.prob_matrices()
        if not mats:
            return None
        if model is None:
            return mats[0]
        return next((m for m in mats if m[3] == model), None)

    def prob_matrices(self) -> list[tuple[np.ndarray, np.ndarray, list[str], str]]:
        """`prob_matrix` of every classifier the library holds, cached until the catalogue gains segments.

        Each matrix is stored label-major (Fortran order: one class's probabilities over every segment are
        contiguous), the way text search reads it: a query's few classes over many segments (at 100k segments
        x 521 classes a row-major matrix made it read a cache line per segment and class). Indexing and values
        are those of the row-major matrix."""
        # the newest id is O(log n) (COUNT(*) scanned 100k rows: 12 ms per search); rows of segments
        # removed since are harmless: results are looked up in the catalogue and dropped
        self._follow_swaps()
        stamp = self.catalogue.newest_prob_id()
        cached = self._memo.get("probs")
        if cached and cached[0] == stamp:
            return cached[1]
        if stamp is None:
            return []
        val = [(ids, np.asfortranarray(probs), labels, model) for ids, probs, labels, model in
               (m for m in (self.catalogue.prob_matrix(name) for name in self.catalogue.prob_models()) if m is not None)]
        self._memo["probs"] = (stamp, val)
        return val

    def media_file(self, media_path: str, clip_id: int | None = None) -> Path:
        """A local file with a clip's media (`media_path` as the catalogue has it): in the library's media
        folder, this machine's cached copy of the one on object storage (fetched when missing), or the
        original of a clip kept in place once it is verified (its size and time as recorded, else its
        SHA-256 again) against what the clip `clip_id` recorded (None: the clip registered at that path).
        Every reader of a clip's audio comes here.

        Raises MediaUnavailable: an original that was moved, deleted or changed since it was ingested, an
        absolute path that is no clip's original, a stored path that leaves the media folder. A file of
        media/ that is missing is returned as a path that does not exist (callers say so).
        """
        if is_in_place(media_path):
            rec = self.catalogue.original(media_path, clip_id)
            if rec is None:
                raise MediaUnavailable(f"{media_path} is not the original of any clip in this library", media_path,
                                       "unregistered")
            verdict = self.verify_original({**rec, "media_path": media_path})
            if verdict != "ok":
                raise MediaUnavailable(unavailable_message(rec["id"], media_path, verdict), media_path, verdict,
                                       rec["id"])
            return Path(media_path)
        root = (self.path / "media").resolve()
        if not (self.path / media_path).resolve().is_relative_to(root):
            raise MediaUnavailable(f"{media_path}: not inside the library's media folder", media_path, "outside")
        return self.media.local(media_path)

    def verify_original(self, rec: dict, rehash: bool = False) -> str:
        """ok | missing | changed, for a clip kept in place (`rec`: id, media_path, content_hash, size, mtime_ns,
        as `Catalogue.originals` gives). Its size and modification time as recorded: ok without reading it;
        otherwise (or with `rehash`) its SHA-256 decides, and an original that was only touched gets its new
        time recorded. A path that now leads elsewhere through a link is changed."""
        path = rec["media_path"]
        try:
            st = os.stat(path)
        except OSError:  # deleted, moved, its disk unmounted, or no longer readable by us
            return "missing"
        if not statmod.S_ISREG(st.st_mode) or os.path.realpath(path) != path:
            return "changed"
        if not rehash and (st.st_size, st.st_mtime_ns) == (rec["size"], rec["mtime_ns"]):
            return "ok"
        key = (path, st.st_size, st.st_mtime_ns, rec["content_hash"])
        verdict = None if rehash else self._verdicts.get(key)
        if verdict is None:
            try:
                verdict = "ok" if content_hash(path) == rec["content_hash"] else "changed"
            except OSError:
                return "missing"
            self._verdicts[key] = verdict
        if verdict == "ok" and (st.st_size, st.st_mtime_ns) != (rec["size"], rec["mtime_ns"]):
            try:  # the same content: later checks need not read it again
                self.catalogue.set_original(rec["id"], path, st.st_size, st.st_mtime_ns)
            except self.catalogue.dialect.Error:  # a read-only catalogue: verified again next time
                pass
        return verdict

    def check_originals(self, rehash: bool = False) -> dict:
        """The clips kept in place: {clips: how many, missing: [{clip_id, path}], changed: [{clip_id, path}]}
        (moved or deleted; content changed since ingest). Costs a stat per original, and a read of those whose
        size or time changed (`rehash`: of every one)."""
        out: dict[str, Any] = {"clips": 0, "missing": [], "changed": []}
        for rec in self.catalogue.originals():
            out["clips"] += 1
            verdict = self.verify_original(rec, rehash)
            if verdict != "ok":
                out[verdict].append({"clip_id": rec["id"], "path": rec["media_path"]})
        return out

    def check_media(self, rehash: bool = False) -> dict:
        """`check_originals` and the same for the files in media/: {clips, in_place: {...}, stored: {clips,
        missing, changed}}; `rehash` reads every file and compares its SHA-256 with the clip's."""
        stored: dict[str, Any] = {"clips": 0, "missing": [], "changed": []}
        for cid, media_path, digest in self.catalogue.clips(("id", "media_path", "content_hash")):
            if is_in_place(media_path):
                continue
            stored["clips"] += 1
            try:  # on object storage, without `rehash`, asked there (not fetched)
                path = self.media_file(media_path) if rehash or self.uri is None else None
                there = path.is_file() if path is not None else self.media.exists(media_path)
            except MediaUnavailable:
                path, there = None, False
            if not there:
                stored["missing"].append({"clip_id": cid, "path": media_path})
            elif rehash and content_hash(path) != digest:
                stored["changed"].append({"clip_id": cid, "path": media_path})
        in_place = self.check_originals(rehash)
        return {"library": self.location, "clips": stored["clips"] + in_place["clips"], "in_place": in_place,
                "stored": stored, "rehashed": rehash}

    def relink_original(self, clip_id: int, path: str | os.PathLike, state: tuple[int, int]) -> bool:
        """A clip kept in place whose original is missing or changed, found again at `path` (the same content:
        the caller hashed it; `state` its (size, mtime_ns) then): the clip now references `path`. Returns
        False, changing nothing, when the clip is not kept in place or its original is still there."""
        row = self.catalogue.clip_media(clip_id)
        rec = self.catalogue.original(row["media_path"], clip_id) if row and is_in_place(row["media_path"]) else None
        if rec is None or self.verify_original({**rec, "media_path": row["media_path"]}) == "ok":
            return False
        return self.catalogue.set_original(clip_id, os.path.realpath(path), *state)

    def readable_media(self, rows: Iterable[Sequence], on_skip: Callable[[int, MediaUnavailable], None] | None = None
                       ) -> Iterator[tuple[Sequence, Path]]:
        """(row, local file) for each clip row (id, media_path, ...) whose media can be read now. A clip whose
        original kept in place is missing or changed is left out and handed to `on_skip(clip id, error)`
        (default: a line on stderr), so a batch over the library (re-index, learning, evaluation) goes on."""
        for row in rows:
            try:
                yield row, self.media_file(row[1], int(row[0]))
            except MediaUnavailable as exc:
                if on_skip is None:
                    print(f"clip {row[0]} skipped: {exc}", file=sys.stderr)
                else:
                    on_skip(int(row[0]), exc)

    def stats(self) -> dict:
        """The catalogue's counts, and the clips kept in place with those whose original is missing or changed."""
        return {"library": self.location, **self.catalogue.stats(), "in_place": self.check_originals()}

    def data_version(self) -> int:
        """Changes whenever another connection commits to the catalogue (see Catalogue.data_version)."""
        return self.catalogue.data_version()

    def newest_ids(self) -> dict:
        return self.catalogue.newest_ids()


def unavailable_message(clip_id: int, path: str, verdict: str) -> str:
    """What to tell a person about a clip kept in place whose original is `verdict` (missing | changed)."""
    if verdict == "missing":
        return (f"clip {clip_id}: its original {path} is missing (moved or deleted since it was ingested); ingest"
                f" the file again with --in-place where it is now, or 'nels remove {clip_id}'")
    return (f"clip {clip_id}: its original {path} changed since it was ingested (the audio indexed is not in it"
            f" any more); 'nels remove {clip_id}' and ingest it again")
