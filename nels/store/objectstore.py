"""Libraries on object storage: `--library s3://bucket/prefix` (or any fsspec URI: gs://, az://, ...).

A library at a URI keeps its media (`<uri>/media/ab/<hash>.<ext>`) and, with the lance store, its vector
tables (`<uri>/indexes/<space>.lance`) there; what must be local lives in a *local folder* keyed by the URI,
`$NELS_CACHE/libraries/<bucket>-<prefix>-<hash>/`: the SQLite catalogue `nels.db` (unless `--catalogue` /
`$NELS_CATALOGUE` names another: a PostgreSQL URL to share it between machines), ingest temp folders, the
spectrogram cache, FAISS indexes when the faiss store is used, and a cache of the media read back (to
decode, serve or draw). The folder holds `remote.json` (`{"uri": ...}`), so opening the folder itself (as
`nels serve --workers N` and the admin jobs do) opens the remote library again.

Credentials and endpoints are fsspec's and LanceDB's: the usual AWS variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for an S3-compatible server elsewhere than AWS).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from nels.config import cache_dir
from nels.errors import LibraryError, disk_error

POINTER = "remote.json"  # in the local folder of a library on object storage


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URI with a scheme other than file:// ('s3://bucket/x', 'gs://...', 'memory://...')."""
    s = str(location)
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s)) and not s.startswith("file://")


def local_folder(uri: str) -> Path:
    """The local folder of the library at `uri`: $NELS_CACHE/libraries/<readable name>-<hash of the URI>."""
    uri = uri.rstrip("/")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.split("://", 1)[1])[:60].strip("-.") or "library"
    return cache_dir() / "libraries" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def remote_of(folder: Path) -> str | None:
    """The URI a local folder stands for (its remote.json), or None for an ordinary library folder."""
    pointer = folder / POINTER
    if not pointer.exists():
        return None
    try:
        return json.loads(pointer.read_text())["uri"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LibraryError(f"{pointer} is damaged ({exc}): it should say {{\"uri\": \"s3://...\"}}") from exc


def resolve(location: str | os.PathLike) -> tuple[Path, str | None]:
    """(the local folder, the object-storage URI or None) of a library given as a folder or a URI."""
    if is_remote(location):
        uri = str(location).rstrip("/")
        return local_folder(uri), uri
    folder = Path(location).expanduser().resolve()
    return folder, remote_of(folder)


def remember(folder: Path, uri: str) -> None:
    """Write the folder's remote.json (atomically), so that opening the folder opens `uri`."""
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / POINTER
    if remote_of(folder) == uri:
        return
    tmp = pointer.with_suffix(f".{os.getpid()}.part")
    tmp.write_text(json.dumps({"uri": uri}) + "\n")
    os.replace(tmp, pointer)


def is_media_path(rel: str) -> bool:
    """Whether a catalogue media path names a file of the library's media folder ("media/ab/<hash>.flac"): not an
    original kept in place (absolute), nor anything a `..` leads out to."""
    return not os.path.isabs(rel) and ".." not in Path(rel).parts and rel.startswith("media/")


class MediaFiles:
    """A library's media files: under the local folder (`uri` None), or on object storage through fsspec with
    a local read cache. Paths are the catalogue's, relative to the library ("media/ab/<hash>.flac")."""

    def __init__(self, folder: Path, uri: str | None = None):
        self.folder, self.uri = folder, uri
        self._fs = None

    @property
    def fs(self):
        """The fsspec filesystem of the URI (made on first use; s3:// needs s3fs)."""
        if self._fs is None:
            import fsspec

            try:
                self._fs, _ = fsspec.core.url_to_fs(self.uri)
            except ImportError as exc:
                raise LibraryError(f"{self.uri}: this storage needs a package that is not installed ({exc});"
                                   f" pip install 'nels[scale]'") from exc
        return self._fs

    def remote(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def exists(self, rel: str) -> bool:
        if self.uri is None:
            return (self.folder / rel).exists()
        return self.fs.exists(self.remote(rel))

    def put(self, src: Path, rel: str, move: bool = False) -> Path | str:
        """Store `src` as `rel` (moved when `move`: a temp file we own, else copied), atomically: a reader
        sees the whole file or none (a rename locally; an object store's PUT is atomic). Returns where."""
        if self.uri is None:
            dest = self.folder / rel
            tmp = dest.with_suffix(dest.suffix + f".{os.getpid()}.part")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if move:
                    shutil.move(str(src), tmp)
                else:
                    shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            return dest
        self.fs.put_file(str(src), self.remote(rel))
        if move:  # keep the download as this machine's cached copy
            cached = self.folder / rel
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), cached)
            except OSError:
                Path(src).unlink(missing_ok=True)
        return self.remote(rel)

    def local(self, rel: str) -> Path:
        """A local file with the media `rel`: the file itself, or this machine's cached copy of the remote
        one (fetched first when missing). A missing remote file gives a path that does not exist."""
        path = self.folder / rel
        if self.uri is None or path.exists():
            return path
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self.remote(rel), str(tmp))
            os.replace(tmp, path)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise disk_error(exc, f"cannot fetch {self.remote(rel)}") from exc
        return path

    def delete(self, rel: str) -> None:
        """Remove the media (and this machine's cached copy); a missing file is no error. Only a path inside
        the media folder: never a user's original (a clip kept in place) or anything a `..` reaches."""
        if not is_media_path(rel):
            raise LibraryError(f"{rel}: not a file of the library's media folder; not deleted")
        (self.folder / rel).unlink(missing_ok=True)
        if self.uri is not None:
            try:
                self.fs.rm_file(self.remote(rel))
            except FileNotFoundError:
                pass
