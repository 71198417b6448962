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


class QueryError(NelsError):
    """A query that cannot be answered as asked (empty, too long, unsupported mode)."""
