"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class NelsError(Exception):
    """Base class: the message is meant for a person."""


class DecodeError(NelsError):
    """A file that FFmpeg cannot read as audio (corrupt, empty, unsupported, no audio stream)."""


class SourceError(NelsError):
    """A source that cannot be fetched: 404, timeout, refused address, yt-dlp failure."""


class LibraryError(NelsError):
    """A missing or incompatible library folder."""


class ModelMismatchError(LibraryError):
    """A library indexed with another model (or other weights) than the one asked to search or add to it."""


class ModelError(NelsError):
    """A missing model, or one trained on other classes or another feature config."""


class DatasetError(NelsError):
    """A dataset folder that is missing or malformed."""


class RejectedError(NelsError):
    """Data the library refuses to store (non-finite vectors or probabilities): the item fails, the batch goes on."""


class QueryError(NelsError):
    """A query that cannot be answered as asked (empty, too long, unsupported mode)."""


class DiskFullError(LibraryError):
    """The library's disk (or the file size limit) is full: nothing half-written was kept."""


DISK_FULL_ERRNOS = {28, 27, 122}  # ENOSPC, EFBIG (file size limit), EDQUOT


def disk_error(exc: BaseException, what: str) -> LibraryError:
    """The LibraryError to raise for an OSError met while writing the library: DiskFullError ("disk full")
    when the disk, a quota or the file size limit is exhausted."""
    if getattr(exc, "errno", None) in DISK_FULL_ERRNOS or "database or disk is full" in str(exc):
        return DiskFullError(f"disk full: {what} ({exc.__class__.__name__}: {exc}); nothing half-written was kept,"
                             f" free some space and re-run")
    return LibraryError(f"{what}: {exc}")
