"""How the catalogue talks to its database: SQLite (a file in the library folder, the default) or PostgreSQL
(`postgresql://…`: one catalogue that several machines write at once).

`nels.store.catalogue` writes each query once, in SQLite's SQL (`?` placeholders; a new row's id from
`insert_id`, not `lastrowid`). A dialect does the rest: opening connections, beginning transactions, the schema
version, the change counter behind `Catalogue.data_version`, telling a full disk from other errors and, for
PostgreSQL, translating the SQLite idioms of the queries (`postgres_sql`, `PgConnection`) and the DDL of
`nels.store.schema` (`postgres_ddl`). No domain queries live here (tests/test_architecture.py lets this module
and the catalogue speak SQL, nothing else).
"""
from __future__ import annotations

import hashlib
import re
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from nels.errors import DiskFullError, LibraryError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    """Whether a catalogue location is a PostgreSQL URL (else it is a SQLite file)."""
    return str(location).startswith(POSTGRES_SCHEMES)


def without_password(url: str) -> str:
    """`url` with any password removed (from the user part and from a `password=` parameter): what may be
    written to disk or printed. libpq then finds the password in $PGPASSWORD or ~/.pgpass."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = user.partition(":")[0] + "@" + host
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SQLite:
    """The default: a file in the library folder, in WAL mode (readers in many threads beside one writer)."""

    name = "sqlite"
    Error = sqlite3.Error

    def connect(self, location: str | Path, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(str(location), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def schema_version(self, conn) -> int:
        return conn.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, conn, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")

    def begin(self, conn, serial: bool = False) -> None:
        """Begin a write transaction. SQLite has one writer at a time anyway: `serial` changes nothing."""
        conn.execute("BEGIN IMMEDIATE")

    begin_migration = begin

    def in_transaction(self, conn) -> bool:
        return conn.in_transaction

    def insert_id(self, conn, sql: str, args: Sequence = ()) -> int | None:
        """Run an INSERT of one row; the new row's id, or None when it added nothing (ON CONFLICT DO NOTHING).
        (`lastrowid`: RETURNING needs SQLite 3.35, newer than some systems' Python has.)"""
        cur = conn.execute(sql, args)
        return cur.lastrowid if cur.rowcount == 1 else None

    def ddl(self, statement: str) -> str:
        return statement

    def data_version(self, conn) -> int:
        """Changes whenever another connection commits (SQLite's own counter)."""
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def storage_error(self, exc: Exception) -> Exception:
        """DiskFullError for a full disk (SQLITE_FULL) or a write the OS refused (a file size limit, an I/O
        error); other errors (a lock held too long) stay what they are."""
        if not isinstance(exc, sqlite3.OperationalError):
            return exc
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") or "disk is full" in str(exc):
            return DiskFullError(f"disk full: the catalogue could not be written ({exc}); the transaction was"
                                 f" rolled back, free some space and re-run")
        return exc


# -- PostgreSQL ---------------------------------------------------------------------------------------------
def _outside_quotes(sql: str) -> str:
    """`?` -> `%s` and `%` -> `%%` (psycopg's placeholders), leaving quoted strings and names alone."""
    out, quote = [], None
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        else:
            out.append("%s" if ch == "?" else ch)
    return "".join(out)


def _split_top(text: str) -> list[str]:
    """`text` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _qualify_upsert(text: str) -> str:
    """In `INSERT INTO t(cols) ... DO UPDATE SET a = f(a, excluded.a)`, name the existing row's columns
    `t.a` on the right of each `=`: SQLite reads a bare column as the existing row's, PostgreSQL calls it
    ambiguous."""
    m = re.match(r"\s*INSERT\s+INTO\s+(\w+)\s*\(([^)]*)\)", text, re.I)
    u = re.search(r"\bDO\s+UPDATE\s+SET\b", text, re.I)
    if not m or not u:
        return text
    table = m.group(1)
    cols = {c.strip().strip('"').lower() for c in m.group(2).split(",")}

    def qualify(w: re.Match) -> str:
        return f"{table}.{w.group(0)}" if w.group(2).lower() in cols else w.group(0)

    out = []
    for assignment in _split_top(text[u.end():]):
        lhs, eq, rhs = assignment.partition("=")
        out.append(lhs + eq + re.sub(r'(?<![\w.%\'"])("?)([A-Za-z_]\w*)\1(?![\w"(.])', qualify, rhs))
    return text[:u.end()] + ",".join(out)


@lru_cache(maxsize=2048)
def postgres_sql(sql: str) -> str:
    """The catalogue's SQLite-flavoured SQL for PostgreSQL (through psycopg):
      `?` -> `%s` (and `%` -> `%%`);  the column `end` -> `"end"` (a reserved word there);  `rowid` -> `ctid`;
      the scalar `MAX(a, b)` / `MIN(a, b)` -> `GREATEST(a, b)` / `LEAST(a, b)`;
      `INSERT OR IGNORE INTO ...` -> `INSERT INTO ... ON CONFLICT DO NOTHING`;
      bare columns of the existing row in `ON CONFLICT ... DO UPDATE SET` qualified with the table's name.
    (`INSERT OR REPLACE` needs the table's keys: `PgConnection` translates it.)"""
    text = _outside_quotes(sql)
    text = re.sub(r"((?:[,(.]|\bSELECT|\bSET)\s*)end\b", r'\1"end"', text, flags=re.I)
    text = re.sub(r"\browid\b", "ctid", text)
    two_args = r"\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)"
    text = re.sub(r"\bMAX" + two_args, r"GREATEST(\1, \2)", text, flags=re.I)
    text = re.sub(r"\bMIN" + two_args, r"LEAST(\1, \2)", text, flags=re.I)
    if re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO\b", text, re.I):
        text = re.sub(r"INSERT\s+OR\s+IGNORE\s+INTO", "INSERT INTO", text, count=1, flags=re.I)
        text = text.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return _qualify_upsert(text)


@lru_cache(maxsize=256)
def postgres_ddl(statement: str) -> str:
    """One SQLite DDL statement of `nels.store.schema` as PostgreSQL: `id INTEGER PRIMARY KEY` becomes an
    identity column, INTEGER -> BIGINT, REAL -> DOUBLE PRECISION (SQLite's REAL is 8 bytes), BLOB -> BYTEA,
    `WITHOUT ROWID` dropped (PostgreSQL tables have no rowid), the column `end` quoted (a reserved word)."""
    s = re.sub(r"--[^\n]*", "", statement)  # comments may hold words that look like types
    s = re.sub(r"\bid\s+INTEGER\s+PRIMARY\s+KEY\b", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", s,
               flags=re.I)
    s = re.sub(r"(?<![\w\"])end(\s+REAL\b)", r'"end"\1', s)
    s = re.sub(r"\bINTEGER\b", "BIGINT", s, flags=re.I)
    s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s, flags=re.I)
    s = re.sub(r"\bBLOB\b", "BYTEA", s, flags=re.I)
    s = re.sub(r"\)\s*WITHOUT\s+ROWID\b", ")", s, flags=re.I)
    return s


class PgRow:
    """A result row read by position or by column name, and `dict(row)`: what sqlite3.Row offers."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence, index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key):
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values))})"


def _pg_rows(cursor):
    names = [c.name for c in (cursor.description or [])]
    index = {n: i for i, n in enumerate(names)}
    return lambda values: PgRow(values, index)


class PgConnection:
    """A psycopg connection that speaks the catalogue's SQL (`postgres_sql`) and returns `PgRow`s:
    `execute` and `executemany` return a cursor (fetchone, fetchall, fetchmany, iteration, rowcount).

    A connection the server dropped (a restart, a timeout) is opened again on next use, and a read that failed
    because of it is re-run once; a write is not (it may have committed), nor anything in a transaction that
    was under way (it is gone: the error says so, and ROLLBACK ends it here too)."""

    def __init__(self, raw, dialect: "PostgreSQL", reopen):
        self.raw = raw
        self.dialect = dialect
        self._reopen = reopen
        self._in_transaction = False
        self._replace: dict[str, str] = {}

    def _run(self, sql: str, call):
        word = sql.lstrip()[:8].upper()
        if self.raw.closed:
            if self._in_transaction:
                self._in_transaction = not word.startswith("ROLLBACK")
                raise self.dialect.psycopg.OperationalError("the connection to the catalogue was lost during a"
                                                            " transaction: nothing of it was written")
            self.raw = self._reopen()
        if word.startswith("BEGIN"):
            self._in_transaction = True
        elif word.startswith(("COMMIT", "ROLLBACK")):
            self._in_transaction = False
        try:
            return call()
        except self.dialect.psycopg.OperationalError:
            if not self.raw.closed or self._in_transaction or not word.startswith("SELECT"):
                raise
            self.raw = self._reopen()
            return call()

    def _sql(self, sql: str) -> str:
        text = postgres_sql(sql)
        if re.match(r"\s*INSERT\s+OR\s+REPLACE\s+INTO\b", text, re.I):
            text = self._replace.get(sql) or self._replace.setdefault(sql, self._upsert(text))
        return text

    def _upsert(self, text: str) -> str:
        """`INSERT OR REPLACE INTO t(cols) ...` as an upsert on the first unique key of `t` (its primary key
        first) among `cols`: the listed columns take the new values, the others their defaults (identity
        columns keep theirs), as SQLite's REPLACE leaves the row."""
        m = re.match(r"\s*INSERT\s+OR\s+REPLACE\s+INTO\s+(\w+)\s*\(([^)]*)\)", text, re.I)
        if not m:
            raise ValueError(f"cannot translate for PostgreSQL (name the columns): {text}")
        table, listed = m.group(1), [c.strip().strip('"') for c in m.group(2).split(",")]
        keys = [list(r[0]) for r in self.raw.execute(
            "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = to_regclass(%s) AND i.indisunique GROUP BY i.indexrelid, i.indisprimary"
            " ORDER BY i.indisprimary DESC, i.indexrelid", [table])]
        key = next((k for k in keys if set(k) <= set(listed)), None)
        if key is None:
            raise ValueError(f"INSERT OR REPLACE INTO {table}: no unique key among the columns {listed}")
        columns = [(r[0], r[1]) for r in self.raw.execute(
            "SELECT attname::text, attidentity::text FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [table])]
        sets = [f'"{c}" = excluded."{c}"' if c in listed else f'"{c}" = DEFAULT'
                for c, identity in columns if c not in key and not identity]
        body = re.sub(r"INSERT\s+OR\s+REPLACE\s+INTO", "INSERT INTO", text, count=1, flags=re.I).rstrip().rstrip(";")
        target = ", ".join(f'"{k}"' for k in key)
        return body + f" ON CONFLICT ({target}) " + (f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING")

    def execute(self, sql: str, args: Sequence | None = ()):
        def call():
            cur = self.raw.cursor()
            # results in binary: vectors and probabilities arrive as their bytes (text would hex-encode them)
            cur.execute(self._sql(sql), list(args or ()), binary=True)
            return cur

        return self._run(sql, call)

    def executemany(self, sql: str, rows):
        def call():
            cur = self.raw.cursor()
            cur.executemany(self._sql(sql), [list(r) for r in rows])
            return cur

        return self._run(sql, call)

    def close(self) -> None:
        self.raw.close()


class PostgreSQL:
    """A PostgreSQL catalogue (`postgresql://user@host:port/db`; `?options=-csearch_path%3Dlib` keeps a library
    in its own schema). Connections are in autocommit; `begin` opens an explicit transaction. Writers do not
    wait for each other: each clip's content hash is UNIQUE and an item claim is one conditional UPDATE, so
    concurrent writers store a clip once and encode an item once; `serial` transactions (taking an admin
    job) and migrations hold an advisory lock of the library's schema as well."""

    name = "postgresql"

    def __init__(self):
        try:
            import psycopg  # only a PostgreSQL catalogue needs it
        except ImportError as exc:
            raise LibraryError("a PostgreSQL catalogue needs psycopg: pip install 'psycopg[binary]'"
                               " (or nels[scale])") from exc

        self.psycopg = psycopg
        self.Error = psycopg.Error

    def _open(self, location: str):
        try:
            return self.psycopg.connect(str(location), autocommit=True, row_factory=_pg_rows, connect_timeout=30)
        except self.psycopg.OperationalError as exc:
            raise LibraryError(f"cannot connect to the catalogue {without_password(str(location))}: "
                               f"{str(exc).strip()}") from exc

    def connect(self, location: str, readonly: bool = False) -> PgConnection:
        return PgConnection(self._open(location), self, lambda: self._open(location))

    def schema_version(self, conn: PgConnection) -> int:
        if conn.execute("SELECT to_regclass('nels_schema_version') IS NOT NULL").fetchone()[0]:
            row = conn.execute("SELECT version FROM nels_schema_version").fetchone()
            return int(row[0]) if row is not None else 0
        return 0

    def set_schema_version(self, conn: PgConnection, version: int) -> None:
        conn.execute("DELETE FROM nels_schema_version")
        conn.execute("INSERT INTO nels_schema_version(version) VALUES (?)", (int(version),))

    def _lock(self, conn: PgConnection, what: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('nels:' || current_schema() || ':' || ?))", (what,))

    def begin(self, conn: PgConnection, serial: bool = False) -> None:
        conn.execute("BEGIN")
        if serial:
            self._lock(conn, "serial")

    def begin_migration(self, conn: PgConnection) -> None:
        """A migration's transaction: one process migrates at a time, the others wait and then see it done."""
        conn.execute("BEGIN")
        self._lock(conn, "migrate")
        conn.execute("CREATE TABLE IF NOT EXISTS nels_schema_version (version INTEGER NOT NULL)")

    def in_transaction(self, conn: PgConnection) -> bool:
        return conn.raw.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE

    def insert_id(self, conn: PgConnection, sql: str, args: Sequence = ()) -> int | None:
        """Run an INSERT of one row; the new row's id, or None when it added nothing (ON CONFLICT DO NOTHING)."""
        row = conn.execute(sql + " RETURNING id", args).fetchone()
        return row[0] if row is not None else None

    def ddl(self, statement: str) -> str:
        return postgres_ddl(statement)

    def data_version(self, conn: PgConnection) -> int:
        """Changes whenever a write transaction commits (or begins) anywhere in the server: the snapshot
        (oldest running transaction, next transaction id, those in progress) differs after every commit of a
        transaction that wrote. Read it before reading the data it guards, as with SQLite's counter."""
        snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        return int.from_bytes(hashlib.blake2b(snap.encode(), digest_size=7).digest(), "big")

    def storage_error(self, exc: Exception) -> Exception:
        errors = self.psycopg.errors
        if isinstance(exc, (errors.DiskFull, errors.IoError)):
            return DiskFullError(f"disk full on the catalogue's server: {str(exc).strip()}; the transaction was"
                                 f" rolled back, free some space and re-run")
        return exc


def dialect_for(location: str | Path) -> SQLite | PostgreSQL:
    """The dialect of a catalogue location: a PostgreSQL URL, else a SQLite file."""
    return PostgreSQL() if is_postgres(location) else SQLite()


def dialect_of(conn: Any) -> SQLite | PostgreSQL:
    """The dialect of an open connection."""
    return conn.dialect if isinstance(conn, PgConnection) else SQLite()
