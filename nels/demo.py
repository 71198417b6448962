"""`nels demo`: build a searchable demo library and serve it.

The corpus, in order of preference: ESC-50 on disk ($NELS_ESC50, ./shared/datasets/esc50,
../shared/datasets/esc50, ~/.cache/nels/esc50); ESC-50 downloaded from its public archive with
--download (cached, verified, with a progress bar); else a small synthetic corpus of labelled sound
events, and the demo says plainly that it is synthetic. With ESC-50 the demo indexes fold 1 only:
the shipped model never saw it in training, so what you find is an honest picture of the model.
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from nels import config

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
CACHE = config.cache_dir()


def find_esc50() -> Path | None:
    for c in config.esc50_candidates():
        if c and (Path(c) / "meta" / "esc50.csv").exists():
            return Path(c).resolve()
    return None


def download_esc50(dest: Path = CACHE / "esc50") -> Path:
    """Download and unpack ESC-50 (~600 MB). The archive is checked (zip CRCs, 2000 clips + metadata)
    and its SHA-256 recorded, so a cached copy is verified instead of fetched again."""
    import urllib.request

    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / "esc50-master.zip"
    if not archive.exists():
        part = archive.with_suffix(".part")
        with urllib.request.urlopen(ESC50_URL, timeout=60) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="ESC-50") as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        part.rename(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums = dest.parent / "esc50-master.sha256"
    if sums.exists() and sums.read_text().strip() != digest:
        raise RuntimeError(f"{archive}: checksum changed since it was first verified; delete it to fetch again")
    with zipfile.ZipFile(archive) as z:
        bad = z.testzip()
        if bad:
            raise RuntimeError(f"{archive}: corrupt member {bad}; delete it to fetch again")
        names = z.namelist()
        if sum(n.endswith(".wav") for n in names) != 2000 or not any(n.endswith("meta/esc50.csv") for n in names):
            raise RuntimeError(f"{archive}: not the ESC-50 archive")
        z.extractall(dest.parent / "esc50-unpacked")
    sums.write_text(digest)
    root = next((dest.parent / "esc50-unpacked").iterdir())
    root.rename(dest)
    return dest


SYNTH_CLASSES = {
    "siren": lambda t, r: np.sin(2 * np.pi * (700 + 300 * np.sin(2 * np.pi * 0.5 * t)) * t),
    "clock_tick": lambda t, r: _ticks(t, 2.0, r),
    "engine": lambda t, r: np.sign(np.sin(2 * np.pi * (40 + 5 * r.random()) * t)) * (0.6 + 0.4 * r.random()),
    "rain": lambda t, r: r.standard_normal(t.size) * (0.5 + 0.5 * (r.random(t.size) > 0.995)),
    "church_bells": lambda t, r: np.sin(2 * np.pi * 523 * t) * np.exp(-((t % 1.5) * 2)) + 0.4 * np.sin(2 * np.pi * 1046 * t) * np.exp(-((t % 1.5) * 3)),
    "chirping_birds": lambda t, r: np.sin(2 * np.pi * (3000 + 1500 * ((t * 6) % 1)) * t) * ((t * 3) % 1 < 0.4),
}


def _ticks(t, rate, r):
    x = np.zeros(t.size)
    sr = config.SAMPLE_RATE
    x[:: int(sr / rate)] = 1.0
    return np.convolve(x, np.exp(-np.arange(300) / 30.0) * np.sin(np.arange(300) * 0.9), mode="same")


def synth_corpus(dest: Path, per_class: int = 8, seconds: float = 5.0, seed: int = 0) -> Path:
    """A small labelled corpus of synthesised sound events (folder per class), for machines without ESC-50."""
    import wave

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * config.SAMPLE_RATE)) / config.SAMPLE_RATE
    for label, fn in SYNTH_CLASSES.items():
        for i in range(per_class):
            x = fn(t, rng) + 0.02 * rng.standard_normal(t.size)
            x = 0.3 * x / (np.abs(x).max() + 1e-9) * (0.3 + 0.7 * rng.random())
            p = dest / label / f"synthetic-{label}-{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            with wave.open(str(p), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(config.SAMPLE_RATE)
                w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return dest


def esc50_fold_files(root: Path, fold: int = 1) -> list[str]:
    audio = root / "audio"
    by_stem = {p.stem: p for p in audio.iterdir()}
    out = []
    with open(root / "meta" / "esc50.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["fold"]) == fold and Path(row["filename"]).stem in by_stem:
                out.append(str(by_stem[Path(row["filename"]).stem]))
    return sorted(out)


def build(library: str, download: bool = False, quiet: bool = False) -> dict:
    """Build the demo library. Returns what was built: corpus (a sentence), synthetic (bool), library, clips,
    added, failed, example (the query to show) and, for the synthetic corpus, recognised (per class: how many
    of the top 5 results of its own name are its own clips)."""
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    root = find_esc50()
    if root is None and download:
        try:
            root = download_esc50()
        except Exception as exc:  # offline: fall through to the synthetic corpus
            print(f"nels demo: could not download ESC-50 ({exc}); using a synthetic corpus", file=sys.stderr)
    if root is not None:
        inputs, what = esc50_fold_files(root, 1), f"ESC-50 fold 1 (400 clips, held out from the shipped model) from {root}"
    else:
        corpus = synth_corpus(CACHE / "synthetic-demo")
        inputs = [str(corpus)]
        what = (f"a SYNTHETIC corpus ({len(SYNTH_CLASSES)} generated sound classes, {corpus}): ESC-50 was not"
                " found; set NELS_ESC50 or pass --download for real recordings")
    print(f"nels demo: indexing {what}", file=sys.stderr)
    print("nels demo: loading models…", file=sys.stderr, flush=True)
    out = {"corpus": what, "synthetic": root is None, "library": str(Path(library).expanduser().resolve())}
    with Library(library) as lib:
        rep = ingest(lib, inputs, options=IngestOptions(progress=not quiet))
        lib.set_meta("demo_corpus", what)
        out.update(clips=lib.stats()["clips"], added=len(rep.added), failed=len(rep.failed))
        if root is not None:
            out["example"] = "dog barking"
        else:
            out["recognised"] = recognised(lib, list(SYNTH_CLASSES))
            out["example"] = max(out["recognised"], key=lambda c: out["recognised"][c]).replace("_", " ")
    print(f"nels demo: library {library} holds {out['clips']} clips ({out['added']} added now,"
          f" {out['failed']} failed)", file=sys.stderr)
    return out


def recognised(lib, classes: list[str], k: int = 5) -> dict[str, int]:
    """Per class name: how many of the top `k` results of a text search for it are its own clips.

    The synthetic sounds only resemble ESC-50's classes: the shipped CNN, trained on real recordings,
    recognises few of them (its 'siren' sounds like church bells to it). The demo says so, with these
    counts, and shows as its example the class that works best here rather than a fixed one."""
    return {c: sum(f"-{c}-" in (r["title"] or "") for r in lib.search(text=c.replace("_", " "), k=k))
            for c in classes}


def best_example(lib, classes: list[str], k: int = 5) -> str:
    """The class name whose text search finds most of its own clips in the top `k` (ties: the first)."""
    hits = recognised(lib, classes, k)
    return max(classes, key=lambda c: hits[c]).replace("_", " ")


SYNTHETIC_NOTE = ("the synthetic corpus is for trying the plumbing only (ingest, search, the website): the shipped"
                  " model learnt real recordings and recognises {good} of these {n} generated classes ({counts})."
                  " For real sounds and honest results run 'nels demo --download' (ESC-50, ~600 MB, once).")


def cli_demo(args) -> int:
    from nels.library import Library

    as_json = getattr(args, "json", False)
    built = build(args.library, args.download, quiet=as_json)
    example = built["example"]
    lib = Library(args.library, create=False)
    try:
        res = lib.search(text=example, k=5)
        answer = res.to_dict()
        answer.update(query=example, k=5, page=1, has_more=len(res) >= 5, sort="relevance")
    finally:
        lib.close()
    note = None
    if built["synthetic"]:
        rec = built["recognised"]
        note = SYNTHETIC_NOTE.format(good=sum(v >= 3 for v in rec.values()), n=len(rec),
                                     counts=", ".join(f"{c} {v}/5" for c, v in rec.items()))
        built["note"] = note
    if as_json:
        import json

        json.dump({**built, "search": answer}, sys.stdout, indent=2,
                  default=lambda o: o.item() if hasattr(o, "item") else o.tolist() if hasattr(o, "tolist") else str(o))
        sys.stdout.write("\n")
        return 0
    if note:
        print(f"\nnote: {note}")
    print(f'\nexample search: "{example}"')
    if res.notice:
        print(f"  note: {res.notice}")
    for i, r in enumerate(res, 1):  # ranks, not scores: a fused score is a rank fusion (~0.03), unreadable
        labels = ", ".join(f"{l['label']} {l['prob']:.2f}" for l in r["labels"][:2])
        print(f"  {i}. {r['title']}  {r['start']:.0f}-{r['end']:.0f} s  [{labels}]")
    if args.no_serve:
        return 0
    import secrets

    from nels import config
    from nels.web.server import serve

    token = config.admin_token()
    if not token:  # the demo's admin page works: a fresh token for this run, printed once
        token = secrets.token_urlsafe(16)
        os.environ[config.ADMIN_TOKEN.env] = token
    print(f"\nserving the demo library on http://{args.host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    print(f"admin page: http://{args.host}:{args.port}/admin  token: {token}", file=sys.stderr)
    return serve(args.library, args.host, args.port)
