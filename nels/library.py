"""`nels.Library`: the Python API over a library folder, the one the CLI, the website and scripts use.

It is the store's `Library` (catalogue + vector indexes + media, `nels.store.library`) with search on
top, so that lower layers (ingest, search, learn) work on the store alone and only this facade knows
about both.
"""
from __future__ import annotations

from nels.search.query import search as _search
from nels.store.library import ClipRecord, Library as _StoreLibrary

__all__ = ["Library", "ClipRecord"]


class Library(_StoreLibrary):
    """A library folder (see `nels.store.library.Library`) that can also be searched."""

    def search(self, text: str | None = None, audio=None, **kw):
        """Ranked results for a text query, an audio query (path, bytes or array) or both.

        See `nels.search.query.search` for the keyword arguments (mode, k, page, filters).
        """
        return _search(self, text=text, audio=audio, **kw)
