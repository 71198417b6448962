"""Writer: commit a ClipRecord and mark its crawl item done, in one transaction."""
from __future__ import annotations

from nels.sources import state
from nels.store.library import ClipRecord, Library


def write(lib: Library, rec: ClipRecord, item_id: int | None) -> int:
    def done(conn, clip_id):
        if item_id is not None:
            state.mark_done(conn, item_id, clip_id, rec.content_hash)

    return lib.add_clip(rec, on_commit=done)


def link_duplicate(lib: Library, item_id: int, clip_id: int, digest: str) -> None:
    """The item's content is already stored (another URL or path): link it, store nothing twice."""
    state.mark_done(lib.conn, item_id, clip_id, digest)
