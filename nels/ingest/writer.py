"""Writer: apply a mapper Outcome to the library, in one transaction per clip (the crawl item is marked
done, skipped or failed in the same place), in one process."""
from __future__ import annotations

from nels.errors import RejectedError
from nels.ingest.mapper import Outcome
from nels.store.library import Library


def write(lib: Library, out: Outcome, retries: int) -> str:
    """Commit `out`. Returns what it became: added | duplicate | relinked (a clip kept in place whose original
    was missing or changed references this item's file now) | skipped | failed | retry."""
    cat = lib.catalogue
    if out.status == "added":
        rec = out.record
        try:
            clip_id, added = lib.store_clip(rec, out.item_id)
        except RejectedError as exc:  # data the catalogue refuses (non-finite numbers): this item fails, not the batch
            out.status, out.error, out.permanent = "failed", str(exc), True
            cat.mark_failed(out.item_id, out.error, True, retries)
            return "failed"
        finally:
            if rec.move_media and rec.media_file.exists():  # a duplicate's download: not moved in
                rec.media_file.unlink(missing_ok=True)
        out.clip_id = clip_id
        if not added and out.original is not None and lib.relink_original(clip_id, out.original[0], out.original[1:]):
            return "relinked"
        return "added" if added else "duplicate"
    if out.status == "duplicate":  # the content is already stored (another URL or path): link it
        cat.mark_done(out.item_id, out.clip_id, out.content_hash)
        # a clip kept in place whose original went missing or changed, found here: it references this file now
        if out.original is not None and lib.relink_original(out.clip_id, out.original[0], out.original[1:]):
            return "relinked"
        return "duplicate"
    if out.status == "skipped":
        cat.mark_skipped(out.item_id, out.error)
        return "skipped"
    cat.mark_failed(out.item_id, out.error, out.permanent, retries)
    return "failed"
