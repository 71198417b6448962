"""The SQLite catalogue's schema: migrations, applied in order by `nels.store.catalogue.migrate`.

SQLite in WAL mode is the single source of truth: vectors live here too (as float32 blobs), and
the FAISS files under indexes/ are derived caches that are re-synced from it. That is what makes a
`kill -9` harmless: a clip, its segments, labels and vectors commit in one transaction, and an
index file that lags behind is caught up (or rebuilt) on the next open.
"""
from __future__ import annotations

SCHEMA_VERSION = 8

# Each migration brings the schema from version i to i+1; never edit one that has shipped.
MIGRATIONS: list[str] = [
    # 0 -> 1: the core catalogue
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (                 -- crawl state: one row per thing to fetch
        id INTEGER PRIMARY KEY,
        uri TEXT NOT NULL UNIQUE,        -- absolute path, URL, or yt-dlp URL
        kind TEXT NOT NULL,              -- file | url | ytdlp
        query TEXT, title TEXT, uploader TEXT, duration REAL, licence TEXT, webpage_url TEXT,
        status TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed | skipped
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        content_hash TEXT,
        clip_id INTEGER,
        created_at REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE INDEX items_status ON items(status);
    CREATE TABLE clips (
        id INTEGER PRIMARY KEY,
        content_hash TEXT NOT NULL UNIQUE,
        media_path TEXT NOT NULL,        -- relative to the library folder
        source_uri TEXT, source_kind TEXT, title TEXT, uploader TEXT, licence TEXT, query TEXT,
        webpage_url TEXT, duration REAL NOT NULL, fetched_at REAL, added_at REAL NOT NULL,
        meta TEXT
    );
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY,
        clip_id INTEGER NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
        start REAL NOT NULL, end REAL NOT NULL
    );
    CREATE INDEX segments_clip ON segments(clip_id);
    CREATE TABLE vectors (               -- the truth behind indexes/<space>.faiss
        space TEXT NOT NULL,
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        vec BLOB NOT NULL,
        PRIMARY KEY (space, segment_id)
    ) WITHOUT ROWID;
    CREATE TABLE probs (                 -- full class-probability vector per segment (text search)
        segment_id INTEGER PRIMARY KEY REFERENCES segments(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        probs BLOB NOT NULL
    );
    CREATE TABLE labels (                -- top labels per segment, for display and filtering
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        label TEXT NOT NULL, prob REAL NOT NULL,
        PRIMARY KEY (segment_id, label)
    ) WITHOUT ROWID;
    CREATE INDEX labels_label ON labels(label, prob);
    CREATE TABLE models (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, path TEXT,
        labels TEXT, created_at REAL NOT NULL, meta TEXT
    );
    """,
    # 1 -> 2: relevance feedback and the learning loop
    """
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY, query TEXT NOT NULL, mode TEXT, clip_id INTEGER NOT NULL,
        segment_id INTEGER, relevant INTEGER NOT NULL, label TEXT, created_at REAL NOT NULL
    );
    CREATE TABLE iterations (
        id INTEGER PRIMARY KEY, run TEXT NOT NULL, iteration INTEGER NOT NULL, strategy TEXT NOT NULL,
        model TEXT, map REAL, per_class TEXT, selected TEXT, created_at REAL NOT NULL,
        UNIQUE (run, strategy, iteration)
    );
    """,
    # 2 -> 3: admin jobs, shared by every server process
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued',   -- queued | running | done | failed
        pid INTEGER,                             -- the server process running it
        created_at REAL NOT NULL, started_at REAL, finished_at REAL, result TEXT, error TEXT
    );
    CREATE INDEX jobs_status ON jobs(status);
    """,
    # 3 -> 4: several classifiers per segment (the own CNN and a pretrained backbone, fused at search time)
    """
    CREATE TABLE probs_by_model (
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        probs BLOB NOT NULL,
        PRIMARY KEY (segment_id, model)
    );
    INSERT INTO probs_by_model(segment_id, model, probs) SELECT segment_id, model, probs FROM probs;
    DROP TABLE probs;
    ALTER TABLE probs_by_model RENAME TO probs;
    CREATE INDEX probs_model ON probs(model, segment_id);
    """,
    # 4 -> 5: an item being processed is claimed by its ingest run, so concurrent runs never encode it twice
    """
    ALTER TABLE items ADD COLUMN claimed_by TEXT;
    ALTER TABLE items ADD COLUMN claimed_at REAL;
    """,
    # 5 -> 6: text queries the vocabulary covers weakly (candidates for new classes; issue 16's growing vocabulary)
    """
    CREATE TABLE query_log (
        query TEXT PRIMARY KEY,          -- normalised: lower case, single spaces
        count INTEGER NOT NULL DEFAULT 0,
        best_score REAL,                 -- the coverage score of the last time it was asked
        best_label TEXT,                 -- the closest class then
        first_at REAL NOT NULL, last_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'open'   -- open | accepted | dismissed
    );
    CREATE INDEX query_log_status ON query_log(status, count);
    """,
    # 6 -> 7: `nels run`, the unattended loop: its steps, model versions (promoted/rejected), crawl queries, and
    # encodings staged by a re-index until they replace the served ones in one transaction
    """
    CREATE TABLE run_steps (             -- one row per (cycle, step): what the loop did or is doing now
        id INTEGER PRIMARY KEY, cycle INTEGER NOT NULL, step TEXT NOT NULL,
        status TEXT NOT NULL,            -- running | done | skipped | failed
        detail TEXT, started_at REAL NOT NULL, finished_at REAL,
        UNIQUE (cycle, step)
    );
    CREATE TABLE model_versions (
        name TEXT PRIMARY KEY, path TEXT NOT NULL, parent TEXT, cycle INTEGER,
        status TEXT NOT NULL,            -- candidate | promoting | serving | retired | rejected
        map REAL, per_class TEXT, reason TEXT, detail TEXT, created_at REAL NOT NULL, decided_at REAL
    );
    CREATE TABLE crawl_queries (         -- what the planner searches for, per class
        query TEXT PRIMARY KEY, label TEXT NOT NULL, origin TEXT NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0, found INTEGER NOT NULL DEFAULT 0, last_at REAL
    );
    CREATE TABLE staged_clips (target TEXT NOT NULL, clip_id INTEGER NOT NULL REFERENCES clips(id) ON DELETE CASCADE,
        PRIMARY KEY (target, clip_id)) WITHOUT ROWID;
    CREATE TABLE staged_vectors (target TEXT NOT NULL, space TEXT NOT NULL,
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE, model TEXT NOT NULL, vec BLOB NOT NULL,
        PRIMARY KEY (target, space, segment_id)) WITHOUT ROWID;
    CREATE TABLE staged_probs (target TEXT NOT NULL, segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        model TEXT NOT NULL, probs BLOB NOT NULL, PRIMARY KEY (target, segment_id, model)) WITHOUT ROWID;
    CREATE TABLE staged_labels (target TEXT NOT NULL, segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        label TEXT NOT NULL, prob REAL NOT NULL, PRIMARY KEY (target, segment_id, label)) WITHOUT ROWID;
    """,
    # 7 -> 8: clips kept in place (`nels ingest --in-place`): media_path is then the original's absolute path, and
    # its size and modification time when it was hashed tell a moved or changed original (NULL: a file in media/)
    """
    ALTER TABLE clips ADD COLUMN media_size INTEGER;
    ALTER TABLE clips ADD COLUMN media_mtime_ns INTEGER;
    CREATE INDEX clips_media ON clips(media_path);
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION

