"""Every setting NELS reads from the environment, every default path and the tuning constants, in one place.

Environment variables are read when asked for (not at import), so a test or a long-running server sees
the value in force at that moment. `SETTINGS` is the documented table; the README's configuration
table is checked against it (tests/test_architecture.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    doc: str

    def get(self) -> str:
        v = os.environ.get(self.env)
        return v if v not in (None, "") else self.default


LIBRARY = Setting("NELS_LIBRARY", "./nels-library", "the library folder when `--library` is not given")
CACHE = Setting("NELS_CACHE", "~/.cache/nels", "feature, embedding and text-vector caches; the ESC-50 download")
ADMIN_TOKEN = Setting("NELS_ADMIN_TOKEN", "", "admin token of the website and API; unset: admin is off")
MAX_UPLOAD_MB = Setting("NELS_MAX_UPLOAD_MB", "20", "largest audio upload the website accepts (MB)")
BF16 = Setting("NELS_BF16", "", "1/0 forces bfloat16 CNN inference on/off; unset: on where the CPU has native bf16")
YTDLP_SEARCH = Setting("NELS_YTDLP_SEARCH", "",
                       "a URL template with {query} and {n} that replaces YouTube search (e.g. a local site)")
ESC50 = Setting("NELS_ESC50", "", "where ESC-50 is, for `nels demo` (else ./shared, ../shared, the cache)")
VECTOR_STORE = Setting("NELS_VECTOR_STORE", "faiss",
                       "the vector store of new libraries: faiss or lance (a library on object storage: lance if unset)")
CATALOGUE = Setting("NELS_CATALOGUE", "", "the catalogue when `--catalogue` is not given: a `postgresql://` URL (shared by"
                    " several machines) or a SQLite file; unset: the one the library recorded, else `<library>/nels.db`")
RUNNER = Setting("NELS_RUNNER", "local", "the ingest runner: local (one process), pool (a process per core) or ray (a Ray cluster)")
SERVE_LIBRARY = Setting("NELS_SERVE_LIBRARY", "", "set by `nels serve --workers N` for its worker processes")
CHROMIUM = Setting("NELS_CHROMIUM", "/usr/bin/chromium", "the browser of the browser tests and bench/screenshot.py")
MODEL = Setting("NELS_MODEL", "", "the encoders of a new library when `--model` is not given; unset: default+yamnet where the YAMNet weights are installed, else the ESC-50 CNN alone")
MODELS = Setting("NELS_MODELS", "", "where `nels models fetch\\|add` install pretrained weights; unset: `$NELS_CACHE/models`")
ALLOWED_HOSTS = Setting("NELS_ALLOWED_HOSTS", "",
                        "Host names the website answers to, comma-separated (`nels serve --allowed-hosts`; `*`: any);"
                        " unset: loopback names and the address served on")
PROGRESS_EVERY = Setting("NELS_PROGRESS_EVERY", "30",
                         "seconds between two progress lines of ingest, `tag`, `reindex` and `demo` where the output is"
                         " not a terminal (a log file, nohup); on a terminal it is a bar")
FAILPOINTS = Setting("NELS_FAILPOINTS", "", "tests only: `name=hold:FILE,...` holds the process at a named place"
                     " (touching FILE) until it is killed (see nels/failpoints.py)")

SETTINGS: tuple[Setting, ...] = (LIBRARY, CACHE, ADMIN_TOKEN, MAX_UPLOAD_MB, BF16, YTDLP_SEARCH, ESC50, VECTOR_STORE,
                                 CATALOGUE,
                                 RUNNER, SERVE_LIBRARY, CHROMIUM, MODEL, MODELS, ALLOWED_HOSTS, PROGRESS_EVERY,
                                 FAILPOINTS)

# -- audio ---------------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz: what decoding produces unless an encoder asks for another rate
SEGMENT_SECONDS = 2.0  # the library's segments: 2 s windows...
SEGMENT_HOP_SECONDS = 1.0  # ...every second
DECODE_CHUNK_SECONDS = 30.0  # decoding streams in chunks of this length: memory is flat in a file's length
MAX_SAMPLE_AMPLITUDE = 1000.0  # float audio peaking above this (x full scale, +60 dB) is refused as absurd
MIN_SOURCE_RATE = 1000  # Hz: a file declaring a lower sample rate is refused (a tiny file, hours of audio)

# -- ingest ---------------------------------------------------------------------------------------------
MAX_DOWNLOAD_BYTES = 2 * 1024 ** 3  # a larger download is refused
RETRY_BACKOFF_SECONDS = 2.0  # failed items wait 2, 4, 8... s before their next attempt
CLAIM_STALE_SECONDS = 6 * 3600  # an item claim older than this (a run on another host that died) is released
STALE_TEMP_SECONDS = 3600  # an `ingest-*` temp folder not named after its process is removed after this long
ENCODE_BATCH = 64  # segments per encoder call

# -- vector indexes ---------------------------------------------------------------------------------------
HNSW_THRESHOLD = 50_000  # FAISS: exact search below this many vectors, HNSW above
HNSW_M = 32
HNSW_EF_SEARCH = 128
# the lance store (nels/store/lance.py): exact below the library's HNSW_THRESHOLD, an ANN index above it
LANCE_INDEX = "IVF_HNSW_SQ"  # or "IVF_PQ" (bench/bench_vectors.py compares them with FAISS HNSW)
LANCE_NPROBES = 20  # IVF partitions searched per query
LANCE_REFINE = 10  # re-rank refine x k candidates on the exact vectors (scores exact; PQ recall)
LANCE_UNINDEXED_FRACTION = 0.1  # appended rows beyond this fraction of the indexed ones are merged into the index
LANCE_RETRAIN_GROWTH = 4.0  # the index is retrained when the table has grown this many times since its training
LANCE_KEEP_VERSIONS_MINUTES = 10  # `flush` keeps table versions this recent (readers in other processes)

# -- search -----------------------------------------------------------------------------------------------
MAX_QUERY_CHARS = 1000
MAX_K = 1000
RRF_K = 60  # reciprocal-rank fusion constant
MIN_LABEL_SIMILARITY = 0.30  # below this best query-label cosine, no label means the query: say so
MIN_ACOUSTIC_SCORE = 0.30  # below this cosine, an audio query has no acoustically similar segment
MIN_LINGUISTIC_SCORE = 0.10  # below this probability mass on the query's labels, nothing is clearly recognised
# several classifiers: one ranks a text query only if its best label similarity is within this of the best
# model's (a vocabulary that does not cover the query adds noise: rank fusion of the ESC-50 CNN with YAMNet
# scored below YAMNet alone on out-of-vocabulary labels). Fixed a priori, not fitted on any evaluation set.
COVERAGE_MARGIN = 0.10

# -- website ----------------------------------------------------------------------------------------------
MAX_QUERY_AUDIO_SECONDS = 600.0
SEARCH_THREADS = 2  # searches per server process at once (CPU-bound, they hold the GIL)
FEEDBACK_PER_MINUTE = 30  # relevance judgements per client (address) and server process, on average...
FEEDBACK_BURST = 20  # ...with bursts of this many (feedback becomes training labels: no flooding)
SPECTROGRAM_CACHE_FILES = 2000  # spectrogram PNGs kept on disk per library (least recently used go first)...
SPECTROGRAM_CACHE_BYTES = 64 * 1024 ** 2  # ...and at most this many bytes of them
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # the Host names `nels serve` answers to by default
SERVER_FILE = "server.json"  # in the library folder while `nels serve` runs (URL, pid): `nels search` uses it


def cache_dir() -> Path:
    """$NELS_CACHE, else $XDG_CACHE_HOME/nels, else ~/.cache/nels."""
    env = os.environ.get(CACHE.env)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nels"


def library_path() -> str:
    return LIBRARY.get()


def admin_token() -> str | None:
    return ADMIN_TOKEN.get() or None


def max_upload_bytes() -> int:
    return int(float(MAX_UPLOAD_MB.get()) * 1024 * 1024)


def bf16_override() -> bool | None:
    """True/False when $NELS_BF16 says so, None when unset (decide by the CPU)."""
    v = os.environ.get(BF16.env)
    if v is None:
        return None
    return v.strip() not in ("0", "", "false", "no")


def models_dir() -> Path:
    """Where installed pretrained models live: $NELS_MODELS, else <cache_dir()>/models."""
    env = MODELS.get()
    return Path(env).expanduser() if env else cache_dir() / "models"


def shared_candidates(relative: str) -> list[Path]:
    """A development machine's shared copies (of `models/yamnet`, `datasets/audioset-ontology`, ...):
    ./shared/RELATIVE, ../shared/RELATIVE and the one beside this checkout."""
    out = []
    for base in (Path("shared"), Path("../shared"), Path(__file__).resolve().parents[2] / "shared"):
        p = base / relative
        if p not in out:
            out.append(p)
    return out


def esc50_candidates() -> list[str]:
    return [p for p in (ESC50.get(), "shared/datasets/esc50", "../shared/datasets/esc50",
                        str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "esc50"),
                        str(cache_dir() / "esc50")) if p]


def readme_table() -> str:
    """The README's configuration table (Markdown), generated from SETTINGS."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {('`' + s.default + '`') if s.default else '-'} | {s.doc} |" for s in SETTINGS]
    return "\n".join(rows)
