"""`nels run`: the never-ending loop, unattended. Each cycle runs these steps, in order:

    plan     per-class crawl queries and budgets (nels.learn.planner)
    crawl    search (yt-dlp, or the NELS_YTDLP_SEARCH site) and register what is found in the crawl table
    ingest   fetch, decode, encode and store the registered items (the ingest pipeline, any runner)
    learn    when --learn-every hours of new audio arrived: select pseudo-labelled clips from the pool with the
             chosen strategy, re-train the classifier head (seed + selections + feedback + bootstrapped new
             classes), measure it and the serving model on the fixed held-out set -> a candidate version
    gate     promote the candidate only if held-out mAP does not drop and no class loses more than --margin
             (nels.learn.gate); else it is kept, labelled rejected, with the reason
    reindex  a promoted version re-encodes the library into staging tables while search keeps answering from
             the served vectors; one transaction then swaps them in (Catalogue.swap_staged), and every process
             holding the library (a `nels serve` beside it) re-reads on its next search (the generation)

Everything the loop knows is in the library: each step's row in `run_steps` (running/done/skipped/failed and
what it did), model versions, crawl queries, the crawl table, staged encodings and meta 'run.*'. A step is
idempotent, so after kill -9 a restart re-runs the step that was running and goes on. SIGTERM lets the current
step finish, then stops. A second `nels run` on the same library is refused (an fcntl lock on run.lock).
Every step writes one JSON line to <library>/run.log (and stdout).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nels import failpoints
from nels.errors import NelsError
from nels.learn import gate, heads, loop, planner

STEPS = ("plan", "crawl", "ingest", "learn", "gate", "reindex")
IDLE_PAUSE = 600.0  # seconds between cycles that neither crawled nor learned
WARM_STEPS, WARM_LR = 100, 0.005  # fine-tuning the serving head (--warm-start): fewer, smaller steps


class RunLocked(NelsError):
    """Another `nels run` holds this library."""


@dataclass
class RunOptions:
    """What `nels run` does (saved in the library: a restart without them resumes with the saved ones).

    dataset, fmt : the labelled seed (an ESC-50 folder or a folder per class).
    heldout_fold : ESC-50 fold kept out of training as the held-out set; heldout : or a folder-per-class set.
    strategy, iterations, cap : selection strategy, loop iterations per learning step, clips per class each.
    learn_every : hours of new audio between learning steps.
    per_cycle, per_query_max : crawl results per cycle in all, and per query.
    margin : the most held-out AP one class may lose for a promotion.
    max_hours, max_gb : stop crawling after this many hours of audio added by the loop / GB of media.
    quiet_hours : "22-6": local hours without crawling. rate : requests per second per host.
    retries, max_duration : fetch attempts per item; longer media are skipped (seconds).
    allow_private : crawl local addresses (a loopback test site); else only public ones (the SSRF guard).
    pause : seconds between cycles. runner : the ingest runner (None: NELS_RUNNER).
    warm_start : fine-tune the serving model's head (WARM_STEPS at WARM_LR) instead of re-training one from scratch.
    audioset_examples : seed AudioSet classes with the ontology's positive-example videos (nels.learn.planner).
    seed_urls : a JSON file {class: [URL, ...]} of the user's own seed URLs.
    """

    dataset: str | None = None
    fmt: str = "esc50"
    heldout_fold: int = 1
    heldout: str | None = None
    strategy: str = "clarity+semantic"
    iterations: int = 2
    cap: int = 5
    learn_every: float = 0.05
    per_cycle: int = 20
    per_query_max: int = 10
    margin: float = 0.05
    max_hours: float | None = None
    max_gb: float | None = None
    quiet_hours: str | None = None
    rate: float = 2.0
    retries: int = 3
    max_duration: float = 600.0
    allow_private: bool = False
    pause: float = 60.0
    runner: str | None = None
    warm_start: bool = False
    audioset_examples: bool = True
    seed_urls: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "RunOptions":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


@dataclass
class Context:
    lib: object
    opts: RunOptions
    log_file: Path
    echo: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    cache: dict = field(default_factory=dict)


# -- the lock ----------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive fcntl lock on <library>/run.lock, released by the kernel when the process dies (kill -9)."""

    def __init__(self, library: Path):
        self.path = Path(library) / "run.lock"
        self.fd = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"another 'nels run' (pid {holder}) is running on this library; stop it first"
                            f" (kill -TERM {holder}) or wait for it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_holder(library: Path) -> int | None:
    """The pid of the `nels run` holding the library, or None when none does."""
    path = Path(library) / "run.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            txt = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(txt) if txt.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- logging -----------------------------------------------------------------------------------------------
def log_line(ctx: Context, **fields) -> dict:
    row = {"t": round(time.time(), 3), **fields}
    line = json.dumps(row, default=str, separators=(",", ":"))
    with open(ctx.log_file, "a") as f:
        f.write(line + "\n")
    if ctx.echo:
        print(line, flush=True)
    return row


# -- models and held-out measurement ---------------------------------------------------------------------------
def load_head(model_dir: str | Path) -> heads.Classifier:
    """(W (C, d), b (C,), labels) of a model folder's classifier over the loop's vectors, read the way its format
    says (`heads.family`: a CNN's output layer; a head-on-a-backbone version's linear layer).

    (None, None, labels) for a classifier that is no linear layer over those vectors: the MLP ensemble of a head
    made by `nels train --backbone yamnet` (the seed version of such a library). Such a model is measured with the
    probabilities its encoder serves (`model_heldout_ap`), and learning from it starts cold, even with
    --warm-start: a linear layer cannot start from an MLP, and fitting one to imitate it would measure the
    imitation, not the model. NelsError for a format the loop cannot re-train."""
    return heads.family(model_dir).read(Path(model_dir))


def heldout_ap(head: heads.Classifier, split: loop.Split, labels: list[str], probs: np.ndarray | None = None) -> dict:
    """label -> AP on the held-out split (whose y indexes `labels`), None for a class the head lacks or the
    held-out set does not hold. The clip probabilities are the head's (W, b) over the split's vectors averaged over
    each clip's segments, or `probs` (clips, head labels) when given (a model without such a head)."""
    from nels.metrics import average_precision

    W, b, head_labels = head
    p = loop.clip_probs((W, b), split) if probs is None else np.asarray(probs)
    out = {}
    for k, name in enumerate(labels):
        n = int((split.y == k).sum())
        if not n:
            continue  # not a held-out class
        if name not in head_labels:
            out[name] = None
            continue
        j = head_labels.index(name)
        out[name] = round(float(average_precision((split.y == k)[np.argsort(-p[:, j])], n)), 4)
    return out


def encoder_clip_probs(enc, paths: list[str]) -> np.ndarray:
    """(files, C): each file's segment probabilities from `enc`, averaged over its segments (framed and decoded as
    the loop frames its vectors, `embed.embed_audio`); a file without a segment, or unreadable, scores zeros."""
    from nels.audio.decode import decode

    out = np.zeros((len(paths), len(enc.labels)), np.float32)
    for i, p in enumerate(paths):
        try:
            probs = enc.encode(decode(p, sr=enc.sample_rate), enc.sample_rate).probs
        except Exception as exc:  # noqa: BLE001 - as embed_files: report and go on
            print(f"skipped {p}: {exc}", file=sys.stderr)
            continue
        if probs is not None and len(probs):
            out[i] = probs.mean(axis=0)
    return out


def model_heldout_ap(ctx: "Context", model_dir: str | Path, held: loop.Split, labels: list[str]) -> dict:
    """Held-out AP of the model version in `model_dir`: from its linear classifier over the held-out vectors, as
    every candidate is measured; for a model without one (a head's MLP ensemble, `load_head`), from the
    probabilities its encoder serves: the segment probabilities of each held-out clip, averaged over the clip as
    the candidate's are (the library serves segment probabilities). Encoded once per process and model."""
    from nels.encoders.base import create_encoder

    head = load_head(model_dir)
    if head[0] is not None:
        return heldout_ap(head, held, labels)
    key = ("heldout-probs", str(model_dir))
    if key not in ctx.cache:
        ctx.cache[key] = encoder_clip_probs(create_encoder(str(model_dir)), ctx.cache["heldout_files"])
    return heldout_ap(head, held, labels, probs=ctx.cache[key])


def mean_ap(per: dict) -> float | None:
    v = [x for x in per.values() if x is not None]
    return round(float(np.mean(v)), 4) if v else None


def serving(lib) -> dict | None:
    rows = lib.catalogue.model_versions("serving")
    return rows[-1] if rows else None


def ensure_seed_version(lib) -> dict:
    """The library's current model (a CNN, or a head on a backbone: any format in `heads.FAMILIES`), recorded as
    the first serving version (cycle 0) when there is none."""
    from nels.encoders.selection import library_encoder

    cur = serving(lib)
    if cur is not None:
        return cur
    enc = library_encoder(lib)
    if not enc.labels or getattr(enc, "path", None) is None or not (Path(enc.path) / "model.json").exists():
        raise NelsError("nels run re-trains a model's classifier: index the library with a CNN model first"
                        " ('nels ingest --model default' on a new library, or 'nels reindex --model default'),"
                        " or with a head made by 'nels train --backbone yamnet' (--model HEAD_FOLDER)")
    heads.family(enc.path)  # a format the loop re-trains, or a clear error
    lib.catalogue.add_model_version(enc.name, str(enc.path), None, 0, "serving", None, None,
                                    {"spec": lib.get_meta("model")})
    lib.set_meta("run.base_model", str(enc.path))
    return serving(lib)


# -- the labelled data: seed and held-out ------------------------------------------------------------------------
def run_labels(lib, opts: RunOptions, dataset_labels: list[str]) -> list[str]:
    """The classes the loop learns: the serving model's, the seed dataset's, and the accepted new ones."""
    labels = list(load_head(serving(lib)["path"])[2])
    for name in list(dataset_labels) + list((lib.get_meta("run.new_classes") or {}).keys()):
        if name not in labels:
            labels.append(name)
    return labels


def labelled_splits(ctx: Context, enc, labels: list[str]):
    """(seed Split, held-out Split, held-out keys) from the options' dataset, each file embedded once (cached on
    disk per file: another seed set or another library over the same files costs no encoding)."""
    from nels.audio.decode import decode
    from nels.learn.embed import embed_files
    from nels.training.datasets import load_dataset

    o = ctx.opts
    ds = load_dataset(o.dataset, o.fmt)
    if o.heldout:
        hd = load_dataset(o.heldout, "folders")
        train = list(ds.items) if o.fmt != "esc50" else [it for it in ds.items if it.fold != o.heldout_fold]
        test = [(it, hd.labels[it.label]) for it in hd.items]
    elif o.fmt == "esc50":
        train = [it for it in ds.items if it.fold != o.heldout_fold]
        test = [(it, ds.labels[it.label]) for it in ds.items if it.fold == o.heldout_fold]
    else:
        raise NelsError("a held-out set is needed: --heldout DIR (a folder per class), or an ESC-50 dataset"
                        " with --heldout-fold K")
    if not test:
        raise NelsError("the held-out set is empty")
    ctx.cache["heldout_files"] = [str(it.path) for it, _ in test]  # model_heldout_ap encodes them for a model

    def split(pairs, tag):
        key = (tag, enc.name)
        if key not in ctx.cache:
            X, clip = embed_files(enc, [str(it.path) for it, _ in pairs], lambda k: decode(k))
            ctx.cache[key] = (X, clip)
        X, clip = ctx.cache[key]
        return loop.Split(X, clip, np.array([labels.index(n) if n in labels else -1 for _, n in pairs]))

    seed = split([(it, ds.labels[it.label]) for it in train], f"run-seed-{ds.root}-{o.heldout_fold}")
    held = split(test, f"run-heldout-{o.heldout or ds.root}-{o.heldout_fold}")
    return seed, held, ds.labels


def library_pool(ctx: Context, enc) -> tuple[loop.Split, list[int], list[str]]:
    """(Split of every library clip, clip ids, crawl texts), each clip embedded once per process (the pool grows
    by a few clips a cycle; re-embedding all of them every cycle cost most of a learning step) and cached on disk
    by its content hash (the same audio in another library, or after a restart, is not encoded again)."""
    from nels.audio.decode import decode
    from nels.learn.embed import embed_cached

    memo = ctx.cache.setdefault(("pool", enc.name), {})
    rows = ctx.lib.catalogue.clips(("id", "media_path", "query", "title", "content_hash"))
    X, clip, ids, texts = [], [], [], []
    for r in rows:
        if r[0] not in memo:
            try:
                memo[r[0]] = embed_cached(enc, r[4], lambda: decode(str(ctx.lib.media_file(r[1])), max_seconds=600))
            except Exception as exc:  # noqa: BLE001 - a damaged media file: left out of the pool, said so
                print(f"pool: clip {r[0]} skipped: {exc}", file=sys.stderr)
                memo[r[0]] = np.zeros((0, enc.dim), np.float32)
        e = memo[r[0]]
        X.append(e)
        clip += [len(ids)] * len(e)
        ids.append(r[0])
        texts.append(((r[2] or "") + " | " + (r[3] or "")).strip(" |"))
    Xa = np.concatenate(X) if X else np.zeros((0, enc.dim), np.float32)
    return loop.Split(Xa, np.asarray(clip, np.int64), np.full(len(ids), -1)), ids, texts


def _with_extra(seed: loop.Split, pool: loop.Split, idx: list[int], y: list[int]) -> loop.Split:
    """The seed plus pool clips `idx` labelled `y` (feedback, bootstrapped new classes)."""
    if not idx:
        return seed
    seg = pool.segments_of(idx)
    where = {c: i for i, c in enumerate(idx)}
    return loop.Split(np.concatenate([seed.X, pool.X[seg]]),
                      np.concatenate([seed.clip, np.array([where[c] for c in pool.clip[seg]], int) + seed.n_clips]),
                      np.concatenate([seed.y, np.asarray(y, int)]))


# -- the steps -----------------------------------------------------------------------------------------------------
def step_plan(ctx: Context, cycle: int) -> tuple[str, dict]:
    lib = ctx.lib
    cur = serving(lib)
    seed_labels = lib.get_meta("run.dataset_labels") or []
    new = lib.get_meta("run.new_classes") or {}
    classes = list(dict.fromkeys(list(seed_labels) + list(new)))
    planner.ensure_queries(lib.catalogue, classes)
    for name, spec in new.items():
        for q in spec.get("queries", []):
            lib.catalogue.add_crawl_query(" ".join(q.lower().split()), name, "vocabulary")
    o = ctx.opts
    extra = planner.read_seed_file(o.seed_urls) if o.seed_urls else {}
    seeds = planner.seed_urls(classes, None if o.audioset_examples else {}, extra=extra)
    planner.ensure_seeds(lib.catalogue, seeds)
    ap = (cur or {}).get("per_class") or {}
    planned = planner.plan(lib.catalogue, classes, ap, o.per_cycle, o.per_query_max, seeds)
    return "done", {"queries": [p.to_list() for p in planned], "classes": len(classes),
                    "seed_urls": sum(p.kind == "url" for p in planned)}


def _caps_reached(ctx: Context) -> str | None:
    o, lib = ctx.opts, ctx.lib
    if o.max_hours is not None:
        added = (lib.catalogue.audio_seconds() - float(lib.get_meta("run.audio_at_start") or 0.0)) / 3600
        if added >= o.max_hours:
            return f"--max-hours reached ({added:.2f} h of audio added)"
    if o.max_gb is not None:
        size = sum(f.stat().st_size for f in (lib.path / "media").rglob("*") if f.is_file()) / 1e9
        if size >= o.max_gb:
            return f"--max-gb reached ({size:.2f} GB of media)"
    if planner.in_quiet_hours(planner.parse_quiet_hours(o.quiet_hours)):
        return f"quiet hours ({o.quiet_hours})"
    return None


def step_crawl(ctx: Context, cycle: int) -> tuple[str, dict]:
    from nels.errors import SourceError
    from nels.sources.source import Item
    from nels.sources.ytdlp import YtDlpSource, search_target

    why = _caps_reached(ctx)
    if why:
        return "skipped", {"reason": why}
    cat = ctx.lib.catalogue
    planned = ((cat.step_detail(cycle, "plan") or {}).get("detail") or {}).get("queries", [])
    limiter = ctx.cache.setdefault("limiter", planner.HostLimiter(ctx.opts.rate))
    listed = new = seeds = 0
    errors = []
    primary = planner.primary_queries(cat)
    for query, label, n, *kind in planned:
        if kind == ["url"]:  # a seed URL: registered as it is; fetched (or failing, with retries) at ingest
            limiter.wait(query)
            before = {r["uri"] for r in cat.pending_crawl_items(ctx.opts.retries)}
            cat.register_items([Item(query, "ytdlp", query=primary.get(label), webpage_url=query)])
            new += query in {r["uri"] for r in cat.pending_crawl_items(ctx.opts.retries)} - before
            seeds += 1
            cat.note_crawl(query, 1)
            continue
        limiter.wait(search_target(query, n))
        src = YtDlpSource(searches=[query], per_query=n, allow_private=ctx.opts.allow_private,
                          max_duration=ctx.opts.max_duration)
        try:
            items = list(src.items())
        except SourceError as exc:
            errors.append(str(exc)[:300])
            continue
        before = {r["uri"] for r in cat.pending_crawl_items(ctx.opts.retries)}
        cat.register_items(items)
        new += len({r["uri"] for r in cat.pending_crawl_items(ctx.opts.retries)} - before)
        listed += len(items)
        cat.note_crawl(query, len(items))
    return "done", {"queries": len(planned), "listed": listed, "seed_urls": seeds, "new_items": new,
                    "errors": errors[:5]}


class CrawledItems:
    """A Source over items already registered by the crawl step: fetched through yt-dlp, politely per host."""

    kind = "ytdlp"

    def __init__(self, rows, allow_private: bool, max_duration: float, rate: float):
        from nels.sources.source import Item

        self.rows = [Item(r["uri"], r["kind"], query=r["query"], title=r["title"], uploader=r["uploader"],
                          duration=r["duration"], licence=r["licence"], webpage_url=r["webpage_url"]) for r in rows]
        self.allow_private, self.max_duration, self.rate = allow_private, max_duration, rate

    def items(self):
        yield from self.rows

    def fetch(self, item, workdir):
        from nels.sources.ytdlp import YtDlpSource

        _fetch_limiter(self.rate).wait(item.uri)
        return YtDlpSource(allow_private=self.allow_private, max_duration=self.max_duration).fetch(item, workdir)


_LIMITERS: dict[float, planner.HostLimiter] = {}


def _fetch_limiter(rate: float) -> planner.HostLimiter:
    """One per-host limiter per process (a pool runner's workers each have theirs)."""
    return _LIMITERS.setdefault(rate, planner.HostLimiter(rate))


def step_ingest(ctx: Context, cycle: int) -> tuple[str, dict]:
    from nels.ingest.runner import IngestOptions, run as ingest_run
    from nels.ingest.runners import make_runner

    why = _caps_reached(ctx)
    if why:
        return "skipped", {"reason": why}
    o, lib = ctx.opts, ctx.lib
    rows = lib.catalogue.pending_crawl_items(o.retries)
    if not rows:
        return "done", {"added": 0, "audio_seconds": 0.0, "failed": 0, "duplicates": 0}
    src = CrawledItems(rows, o.allow_private, o.max_duration, o.rate)
    rep = ingest_run(lib, [src], None, IngestOptions(max_duration=o.max_duration, retries=o.retries, progress=False),
                     make_runner(o.runner) if o.runner else None)
    return "done", {"added": len(rep.added), "audio_seconds": round(rep.seconds_of_audio, 1),
                    "failed": len(rep.failed), "duplicates": rep.duplicates, "skipped": len(rep.skipped),
                    "errors": [e for _, e in rep.failed[:3]]}


def step_learn(ctx: Context, cycle: int) -> tuple[str, dict]:
    from nels.encoders.base import create_encoder
    from nels.learn import library as lib_learn
    from nels.search.query import label_space

    lib, o = ctx.lib, ctx.opts
    cat = lib.catalogue
    audio = cat.audio_seconds()
    since = audio - float(lib.get_meta("run.learned_audio") or 0.0)
    if since < o.learn_every * 3600:
        return "skipped", {"reason": f"{since / 3600:.3f} h of new audio, learning every {o.learn_every} h"}
    cur = serving(lib)
    enc = create_encoder(lib.get_meta("run.base_model") or cur["path"])  # every version shares its backbone
    labels = run_labels(lib, o, lib.get_meta("run.dataset_labels") or [])
    seed, held, _ = labelled_splits(ctx, enc, labels)
    pool, clip_ids, texts = library_pool(ctx, enc)
    space = label_space(labels)
    sims = space.query(texts)[0] if texts else np.zeros((0, len(labels)))
    pos, neg = lib_learn._feedback_labels(lib, labels, space)
    # new classes (accepted from the query log): bootstrapped from the clips their queries found
    new = lib.get_meta("run.new_classes") or {}
    by_query = cat.clips_by_query()
    qlabel = {q["query"]: q["label"] for q in cat.crawl_queries()}
    boot = {}
    for q, cids in by_query.items():
        if qlabel.get(q) in new:
            boot.update({c: labels.index(qlabel[q]) for c in cids})
    extra = {**boot, **pos}
    where = {c: i for i, c in enumerate(clip_ids)}
    idx = [where[c] for c in extra if c in where]
    seed = _with_extra(seed, pool, idx, [extra[clip_ids[i]] for i in idx])
    excluded = set(idx) | {where[c] for c in neg if c in where}
    keep = np.array([i not in excluded for i in range(pool.n_clips)], bool)
    data = loop.LoopData(labels, seed, pool, held, sims, clip_ids)
    failpoints.hit("run.learn")  # tests hold a run here to kill it mid-step
    st = lib_learn.STRATEGIES[o.strategy]()
    if hasattr(st, "fit"):
        from nels.learn.experiment import calibration_data

        st.fit(*calibration_data(data))

    class Masked:  # never select clips judged not relevant, or already labelled
        name = st.name

        def select(self, view, cap):
            view.taken = view.taken | ~keep
            return st.select(view, cap)

    run_name = f"run-c{cycle}"
    warm = {}
    W0, b0, L0 = load_head(cur["path"]) if o.warm_start else (None, None, [])
    if W0 is not None:  # the serving head's rows for the classes it knows, small random rows for new ones
        rng = np.random.default_rng(cycle)
        W = rng.normal(0, 0.01, (len(labels), W0.shape[1]))
        b = np.full(len(labels), float(b0.min()))
        for i, name in enumerate(labels):
            if name in L0:
                W[i], b[i] = W0[L0.index(name)], b0[L0.index(name)]
        warm = {"init": (W, b), "steps": WARM_STEPS, "lr": WARM_LR}
    hist, head = loop.run(data, Masked(), o.iterations, o.cap, patience=o.iterations, seed=cycle,
                          record=loop.recorder(cat, run_name, st.name, cur["name"], labels), **warm)
    base_name = json.loads((Path(lib.get_meta("run.base_model") or cur["path"]) / "model.json").read_text())["name"]
    name = f"{base_name}-run-c{cycle}"
    out = lib.path / "models" / run_name
    heads.family(cur["path"]).write(Path(cur["path"]), out, head[0], head[1], labels, name,
                                    {"learning": {"run": run_name, "strategy": st.name, "iterations": len(hist) - 1,
                                                  "parent_version": cur["name"], "warm_start": bool(warm)}})
    _inherit_joint(Path(cur["path"]), out)
    new_ap = heldout_ap((head[0], head[1], labels), held, labels)
    old_ap = model_heldout_ap(ctx, cur["path"], held, labels)
    if cur.get("per_class") is None:
        cat.set_version_scores(cur["name"], mean_ap(old_ap), old_ap)
    selected = sum(len(r["selected"]) for r in hist)
    precision = [r["precision"] for r in hist if r.get("precision") is not None]
    cat.add_model_version(name, str(out), cur["name"], cycle, "candidate", mean_ap(new_ap), new_ap,
                          {"serving_per_class": old_ap, "serving_map": mean_ap(old_ap), "selected": selected,
                           "feedback_labels": len(pos), "bootstrapped": len(boot), "pool": pool.n_clips,
                           "strategy": st.name, "labels": len(labels)})
    lib.set_meta("run.learned_audio", audio)
    return "done", {"candidate": name, "map": mean_ap(new_ap), "serving_map": mean_ap(old_ap), "pool": pool.n_clips,
                    "selected": selected, "bootstrapped": len(boot), "feedback_labels": len(pos),
                    "precision": round(float(np.mean(precision)), 3) if precision else None}


def _inherit_joint(parent: Path, child: Path) -> None:
    """A head-only version keeps its parent's embedding layers, so the parent's joint space still maps its
    embeddings: copy it, re-bound to the child's name and weights."""
    src = parent / "joint"
    if not (src / "joint.json").exists():
        return
    dst = child / "joint"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    meta = json.loads((dst / "joint.json").read_text())
    cm = json.loads((child / "model.json").read_text())
    meta.update(audio_model=cm["name"], audio_model_sha256=cm.get("weights_sha256"), inherited_from=meta.get("audio_model"))
    (dst / "joint.json").write_text(json.dumps(meta, indent=2) + "\n")


def step_gate(ctx: Context, cycle: int) -> tuple[str, dict]:
    cat = ctx.lib.catalogue
    cand = next((v for v in cat.model_versions("candidate") if v["cycle"] == cycle), None)
    if cand is None:
        decided = next((v for v in cat.model_versions() if v["cycle"] == cycle and v["status"] != "candidate"), None)
        if decided is not None:  # decided before a crash, not yet recorded as a step: say what was decided
            return "done", {"version": decided["name"], "promoted": decided["status"] != "rejected",
                            "reason": decided["reason"], "resumed_decision": True}
        return "skipped", {"reason": "no candidate this cycle"}
    old = (cand["detail"] or {}).get("serving_per_class") or {}
    d = gate.decide(cand["per_class"] or {}, old, ctx.opts.margin)
    cat.set_version_status(cand["name"], "promoting" if d.promote else "rejected", d.reason)
    return "done", {"version": cand["name"], "promoted": d.promote, "reason": d.reason,
                    "map_new": round(d.map_new, 4), "map_old": round(d.map_old, 4)}


def step_reindex(ctx: Context, cycle: int) -> tuple[str, dict]:
    todo = ctx.lib.catalogue.model_versions("promoting")
    if not todo:
        return "skipped", {"reason": "nothing promoted"}
    v = todo[-1]
    detail = swap_in(ctx.lib, v["path"], v["name"], ctx.opts.runner)
    for older in todo[:-1]:  # promoted by an older cycle whose swap a newer promotion supersedes
        ctx.lib.catalogue.set_version_status(older["name"], "retired", "superseded before its swap")
    return "done", {"version": v["name"], **detail}


def swap_in(lib, model_path: str, version: str | None = None, runner: str | None = None, on_staged=None) -> dict:
    """Re-index the library with `model_path` without downtime: every clip is encoded into staging tables
    (resumable: clips staged before a crash are not redone), then one transaction swaps them in.
    `on_staged()`: called when every clip is staged, just before the swap (tests and bench measure around it)."""
    from nels.encoders.base import create_encoder
    from nels.encoders.selection import split_spec, weights_of
    from nels.ingest.reindex import ReindexBuilder
    from nels.ingest.runners import make_runner

    cat = lib.catalogue
    parts = split_spec(lib.get_meta("model") or "default")
    spec = "+".join([str(model_path)] + parts[1:])
    enc = create_encoder(str(model_path))
    target = f"{enc.name}:{weights_of(enc)}"
    encoded = kept = rounds = 0
    while True:
        rounds += 1
        done = cat.staged_clip_ids(target)
        def unreadable(cid: int, exc) -> None:  # an original kept in place, missing or changed: keeps its encodings
            nonlocal kept
            print(f"{exc}: kept as it is", file=sys.stderr)
            cat.stage_current(target, cid)
            kept += 1

        todo = [(row[0], str(path)) for row, path in lib.readable_media(
            [r for r in cat.clips(("id", "media_path")) if r[0] not in done], on_skip=unreadable)]
        for cid, out, error in (make_runner(runner) if runner else make_runner()).run(iter(todo), ReindexBuilder(spec)):
            if error is None and len(out[1]) == len(cat.segment_ids(cid)):
                _, starts, ends, vectors, probs = out
                cat.stage_encodings(target, cid, vectors, probs)
                encoded += 1
            else:  # unreadable now, or segmented differently: keeps its served encodings
                cat.stage_current(target, cid)
                kept += 1
        meta = {"model": spec, "model_name": enc.name, "model_sha256": weights_of(enc)}
        if on_staged is not None:
            on_staged()
        if cat.swap_staged(target, meta, promote=version):
            break
    lib.forget()
    lib.save_indexes()
    return {"clips": encoded, "kept_old": kept, "rounds": rounds, "generation": cat.generation()}


STEP_FUNCS = {"plan": step_plan, "crawl": step_crawl, "ingest": step_ingest, "learn": step_learn,
              "gate": step_gate, "reindex": step_reindex}


# -- the loop ----------------------------------------------------------------------------------------------
def prepare(lib, opts: RunOptions | None) -> RunOptions:
    """Options given now (saved), or the saved ones; the seed version and the dataset's classes recorded."""
    saved = lib.get_meta("run.options")
    if opts is None or opts.dataset is None:
        if not saved:
            raise NelsError("the first 'nels run' on a library needs --dataset (the labelled seed and held-out set)")
        opts = RunOptions.from_dict(saved)
    lib.set_meta("run.options", asdict(opts))
    ensure_seed_version(lib)
    if lib.get_meta("run.audio_at_start") is None:
        lib.set_meta("run.audio_at_start", lib.catalogue.audio_seconds())
    from nels.training.datasets import load_dataset

    lib.set_meta("run.dataset_labels", list(load_dataset(opts.dataset, opts.fmt).labels))
    return opts


def run_cycle(ctx: Context, cycle: int) -> dict | None:
    """Run (or finish) one cycle's steps: {step: status}, or None when stopped before its end."""
    cat = ctx.lib.catalogue
    statuses = {}
    for step in STEPS:
        row = cat.step_detail(cycle, step)
        if row is not None and row["status"] in ("done", "skipped"):
            statuses[step] = row["status"]
            continue  # done before a restart
        if ctx.stop.is_set():
            return None
        resumed = row is not None
        ctx.lib.set_meta("run.now", {"cycle": cycle, "step": step, "since": time.time(), "pid": os.getpid()})
        cat.step_start(cycle, step)
        t0, c0 = time.time(), time.process_time()
        try:
            status, detail = STEP_FUNCS[step](ctx, cycle)
        except NelsError as exc:
            status, detail = "failed", {"error": str(exc)[:500]}
        cat.step_finish(cycle, step, status, detail)
        statuses[step] = status
        log_line(ctx, cycle=cycle, step=step, status=status, resumed=resumed, seconds=round(time.time() - t0, 2),
                 cpu_seconds=round(time.process_time() - c0, 2),
                 **{k: (len(v) if k == "queries" and isinstance(v, list) else v) for k, v in detail.items()})
    ctx.lib.set_meta("run.cycle", cycle + 1)
    return statuses


def run(lib, opts: RunOptions | None = None, once: bool = False, cycles: int | None = None, echo: bool = True,
        install_signals: bool = True) -> dict:
    """The loop: cycles until `cycles` are done (None: forever), `once` (one cycle), or SIGTERM/SIGINT.
    RunLocked when another instance holds the library."""
    with RunLock(lib.path):
        opts = prepare(lib, opts)
        ctx = Context(lib, opts, lib.path / "run.log", echo)
        if install_signals:
            def stop(signum, frame):  # finish the current step, then stop
                ctx.stop.set()

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        log_line(ctx, event="start", pid=os.getpid(), cycle=int(lib.get_meta("run.cycle") or 1))
        ran = 0
        reason = "done"
        while True:
            cycle = int(lib.get_meta("run.cycle") or 1)
            statuses = run_cycle(ctx, cycle)
            if statuses is None:
                reason = "signal"
                break
            ran += 1
            if once or (cycles is not None and ran >= cycles):
                break
            # a cycle that neither crawled nor learned (quiet hours, a cap, nothing new) waits longer
            idle = statuses.get("crawl") != "done" and statuses.get("learn") != "done"
            if ctx.stop.wait(max(opts.pause, IDLE_PAUSE) if idle else opts.pause):
                reason = "signal"
                break
        lib.set_meta("run.now", {"cycle": int(lib.get_meta("run.cycle") or 1), "step": "stopped",
                                 "since": time.time(), "pid": None, "reason": reason})
        log_line(ctx, event="stop", reason=reason, cycles=ran)
        return {"cycles": ran, "stopped_by": reason, "next_cycle": int(lib.get_meta("run.cycle") or 1)}


def rollback(lib, name: str, runner: str | None = None) -> dict:
    """Serve model version `name` again (an older promoted one, or the seed CNN): the same staged re-index and
    atomic swap as a promotion. Refused while `nels run` holds the library (stop it first)."""
    v = lib.catalogue.model_version(name)
    if v is None:
        known = ", ".join(x["name"] for x in lib.catalogue.model_versions()) or "none"
        raise NelsError(f"no model version {name!r} (versions: {known})")
    if not (Path(v["path"]) / "model.json").exists():
        raise NelsError(f"the files of {name} are gone ({v['path']})")
    with RunLock(lib.path):
        detail = swap_in(lib, v["path"], name, runner)
        lib.catalogue.set_version_status(name, "serving", f"rolled back to at {time.strftime('%Y-%m-%d %H:%M')}")
    return {"serving": name, **detail}


# -- what `nels status` and the admin page show -------------------------------------------------------------------
def status(lib, steps: int = 60) -> dict:
    cat = lib.catalogue
    cycles: dict[int, dict] = {}
    for s in reversed(cat.run_steps(steps)):
        c = cycles.setdefault(s["cycle"], {"cycle": s["cycle"]})
        d = s["detail"] or {}
        c[s["step"]] = s["status"]
        if s["step"] == "crawl":
            c["listed"], c["new_items"] = d.get("listed"), d.get("new_items")
        elif s["step"] == "ingest":
            c["added"], c["audio_seconds"], c["failed"] = d.get("added"), d.get("audio_seconds"), d.get("failed")
        elif s["step"] == "learn":
            c["selected"], c["candidate_map"] = d.get("selected"), d.get("map")
        elif s["step"] == "gate":
            c["promoted"], c["reason"] = d.get("promoted"), d.get("reason")
    versions = [{k: v[k] for k in ("name", "status", "cycle", "map", "reason", "parent", "created_at", "decided_at")}
                for v in cat.model_versions()]
    history = [{"version": v["name"], "cycle": v["cycle"], "status": v["status"], "per_class": v["per_class"]}
               for v in cat.model_versions() if v["per_class"]]
    holder = lock_holder(lib.path)
    return {"running": holder is not None, "pid": holder, "now": lib.get_meta("run.now"),
            "next_cycle": lib.get_meta("run.cycle"), "options": lib.get_meta("run.options"),
            "cycles": sorted(cycles.values(), key=lambda c: -c["cycle"]), "versions": versions,
            "ap_history": history, "new_classes": lib.get_meta("run.new_classes") or {},
            "candidates": cat.weak_queries("open", 20), "audio_hours": round(cat.audio_seconds() / 3600, 3),
            "generation": cat.generation()}


# -- the growing vocabulary ------------------------------------------------------------------------------------
def accept_class(lib, query: str, name: str | None = None, queries: list[str] = ()) -> dict:
    """Accept a logged weak query as a new class: the next cycles crawl for it (its queries: the query itself and
    `queries`), bootstrap it from the clips they find (+ feedback), train, measure and gate it as usual."""
    q = " ".join(query.split()).lower()
    if not q:
        raise NelsError("an empty query cannot become a class")
    name = " ".join((name or q).split())
    logged = lib.catalogue.set_query_status(q, "accepted")
    new = lib.get_meta("run.new_classes") or {}
    qs = list(dict.fromkeys([q] + [" ".join(x.lower().split()) for x in queries if x.strip()]))
    new[name] = {"queries": qs, "from_query": q, "accepted_at": time.time()}
    lib.set_meta("run.new_classes", new)
    for x in qs:
        lib.catalogue.add_crawl_query(x, name, "vocabulary")
    return {"class": name, "queries": qs, "was_logged": logged}
