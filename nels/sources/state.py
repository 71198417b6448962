"""The crawl table (`items` in the catalogue): what was asked for, what was fetched, what failed.

Idempotent: an item is keyed by its URI; a done item is never fetched again, and content already
stored (same SHA-256) is linked, not stored twice. A failed item keeps its error and is retried on
later runs with exponential backoff until `retries` attempts; a permanent error (corrupt file,
HTTP 404) is not retried.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Iterable

from nels.sources.source import Item

BACKOFF_SECONDS = 2.0


def register(conn: sqlite3.Connection, items: Iterable[Item]) -> list[int]:
    """Insert new items (existing URIs keep their state, gaining provenance they lacked); return ids."""
    now = time.time()
    ids = []
    for it in items:
        conn.execute(
            "INSERT INTO items(uri, kind, query, title, uploader, duration, licence, webpage_url, created_at, updated_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(uri) DO UPDATE SET"
            " query=COALESCE(items.query, excluded.query), title=COALESCE(items.title, excluded.title),"
            " uploader=COALESCE(items.uploader, excluded.uploader),"
            " duration=COALESCE(items.duration, excluded.duration),"
            " status=CASE WHEN items.status='removed' THEN 'pending' ELSE items.status END",
            (it.uri, it.kind, it.query, it.title, it.uploader, it.duration, it.licence, it.webpage_url, now, now))
        ids.append(conn.execute("SELECT id FROM items WHERE uri=?", (it.uri,)).fetchone()[0])
    return ids


def due(conn: sqlite3.Connection, ids: list[int], retries: int, now: float | None = None) -> list[sqlite3.Row]:
    """Of `ids`, those to work on now: pending, or failed with attempts left and backoff elapsed."""
    now = time.time() if now is None else now
    out = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out += conn.execute(
            f"SELECT * FROM items WHERE id IN ({','.join('?' * len(chunk))}) AND (status='pending' OR"
            f" (status='failed' AND attempts < ? AND next_attempt_at <= ?)) ORDER BY id",
            (*chunk, retries, now)).fetchall()
    return out


def mark_done(conn: sqlite3.Connection, item_id: int, clip_id: int, content_hash: str) -> None:
    conn.execute("UPDATE items SET status='done', clip_id=?, content_hash=?, error=NULL, attempts=attempts+1,"
                 " updated_at=? WHERE id=?", (clip_id, content_hash, time.time(), item_id))


def mark_skipped(conn: sqlite3.Connection, item_id: int, reason: str) -> None:
    conn.execute("UPDATE items SET status='skipped', error=?, updated_at=? WHERE id=?", (reason, time.time(), item_id))


def mark_failed(conn: sqlite3.Connection, item_id: int, error: str, permanent: bool, retries: int) -> None:
    row = conn.execute("SELECT attempts FROM items WHERE id=?", (item_id,)).fetchone()
    attempts = retries if permanent else row[0] + 1
    conn.execute("UPDATE items SET status='failed', error=?, attempts=?, next_attempt_at=?, updated_at=? WHERE id=?",
                 (error, attempts, time.time() + BACKOFF_SECONDS * 2 ** max(0, attempts - 1), time.time(), item_id))
