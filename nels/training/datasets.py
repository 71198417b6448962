"""Labelled datasets for training and evaluating the sound-event CNN.

Two layouts:

* ``esc50``: ``DIR/meta/esc50.csv`` (columns filename, fold, target, category) + ``DIR/audio/``.
  The CSV may name ``*.wav`` while the files on disk are ``*.flac`` (or any other audio
  extension): files are resolved by stem.
* ``folders``: ``DIR/<class>/*.wav|flac|mp3|ogg|...``, one sub-folder per class (sorted names
  give the label order). No folds: the trainer draws its validation split at random.
* ``realworld``: ``DIR/labels.csv`` with columns ``file`` (relative to DIR), ``label`` (free text, e.g.
  "horse neighing") and optionally ``esc50_class`` (one of the 50 ESC-50 class names when the clip belongs
  to it, else empty); other columns (source, licence, ...) are kept out of the way. Labels may have a
  single clip. An evaluation layout (``nels evaluate ... --format realworld``): no folds, not for training.

Bad input never becomes a silent wrong label: a missing path, a malformed CSV (missing columns,
non-integer or inconsistent fold/target values), a class with no files, raise ``DatasetError``;
a clip that cannot be decoded, or (esc50) is not of the expected length, is skipped and reported.

Features are computed once per (dataset, FeatureConfig) and cached on disk as one ``.npy`` of
concatenated log-mel frames plus an index (``.json``), keyed by a hash of the config and of every
file's path, size and mtime, so an edited dataset is recomputed, never served stale.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nels import config
from nels.audio.features import FeatureConfig, logmel
from nels.errors import DatasetError, NelsError

AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".aiff", ".aif", ".wma", ".mp4"}
ESC50_COLUMNS = ("filename", "fold", "target", "category")
DEFAULT_CACHE = config.cache_dir() / "features"


@dataclass
class Item:
    path: Path
    label: int
    fold: int | None = None
    esc50_class: str | None = None  # realworld: the ESC-50 class the clip belongs to, if any


@dataclass
class Dataset:
    root: Path
    format: str
    labels: list[str]
    items: list[Item]
    expected_seconds: float | None = None  # clips of another length are skipped (esc50: 5 s)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def folds(self) -> list[int]:
        return sorted({it.fold for it in self.items if it.fold is not None})


def _check_root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return root


def load_esc50(root, expected_seconds: float = 5.0) -> Dataset:
    """Read an ESC-50 layout. Missing audio files are reported as skipped (not an error) unless none exist."""
    root = _check_root(root)
    meta = root / "meta" / "esc50.csv"
    audio_dir = root / "audio"
    if not meta.is_file():
        raise DatasetError(f"{root}: not an ESC-50 layout (no meta/esc50.csv); use --format folders for DIR/<class>/*.wav")
    if not audio_dir.is_dir():
        raise DatasetError(f"{root}: not an ESC-50 layout (no audio/ folder)")
    by_stem: dict[str, Path] = {}
    for p in audio_dir.iterdir():
        if p.is_file() and p.suffix.lower() in AUDIO_EXTS:
            by_stem.setdefault(p.stem, p)
    try:
        with open(meta, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ESC50_COLUMNS if c not in cols]
            if missing:
                raise DatasetError(f"{meta}: missing column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{meta}: not a readable CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{meta}: no rows")
    names: dict[int, str] = {}
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    for line, r in enumerate(rows, start=2):
        fn = (r.get("filename") or "").strip()
        if not fn:
            raise DatasetError(f"{meta}:{line}: empty filename")
        try:
            fold = int(str(r["fold"]).strip())
            target = int(str(r["target"]).strip())
        except (TypeError, ValueError):
            raise DatasetError(f"{meta}:{line}: fold and target must be integers "
                               f"(got fold={r.get('fold')!r}, target={r.get('target')!r})") from None
        if fold < 1:
            raise DatasetError(f"{meta}:{line}: fold must be >= 1 (got {fold})")
        if target < 0:
            raise DatasetError(f"{meta}:{line}: target must be >= 0 (got {target})")
        cat = (r.get("category") or "").strip()
        if not cat:
            raise DatasetError(f"{meta}:{line}: empty category")
        if names.setdefault(target, cat) != cat:
            raise DatasetError(f"{meta}:{line}: target {target} is '{cat}' here but '{names[target]}' earlier")
        path = by_stem.get(Path(fn).stem)
        if path is None:
            skipped.append((str(audio_dir / fn), "listed in esc50.csv but not found in audio/"))
            continue
        items.append(Item(path, target, fold))
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{meta}: targets must be 0..{len(names) - 1} without gaps (got {sorted(names)[:10]}...)")
    if len(set(names.values())) != len(names):
        raise DatasetError(f"{meta}: two targets share a category name")
    if not items:
        raise DatasetError(f"{root}: none of the {len(rows)} clips in meta/esc50.csv were found in audio/")
    labels = [names[i] for i in range(len(names))]
    present = {it.label for it in items}
    empty = [labels[i] for i in range(len(labels)) if i not in present]
    if empty:
        raise DatasetError(f"{root}: class(es) with no audio files: {', '.join(empty)}")
    return Dataset(root, "esc50", labels, items, expected_seconds, skipped)


def load_folders(root, min_classes: int = 2) -> Dataset:
    """Read DIR/<class>/<audio files>; every sub-folder is a class and must hold audio. min_classes : 1 where
    the classes are added to a model that has others (`nels train --add`)."""
    root = _check_root(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected DIR/<class>/*.wav)")
    if len(classes) < min_classes:
        raise DatasetError(f"{root}: only one class ('{classes[0].name}'); a classifier needs at least two")
    items: list[Item] = []
    empty = []
    for i, c in enumerate(classes):
        files = sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)
        if not files:
            empty.append(c.name)
        items.extend(Item(p, i) for p in files)
    if empty:
        raise DatasetError(f"{root}: class folder(s) with no audio files: {', '.join(empty)} "
                           f"(audio extensions: {', '.join(sorted(AUDIO_EXTS))})")
    return Dataset(root, "folders", [c.name for c in classes], items, None, [])


REALWORLD_COLUMNS = ("file", "label")


def esc50_class_names() -> list[str]:
    """The 50 ESC-50 class labels ("dog", "sea_waves", ...), from the shipped vocabulary."""
    from nels.encoders.text import load_vocabulary

    return list(load_vocabulary().classes)


def load_realworld(root) -> Dataset:
    """Read DIR/labels.csv (file,label[,esc50_class,...]); see the module docstring.

    Labels are sorted for the label order. A listed file that is missing is reported as skipped (an error
    when none exists); an empty label, a file listed twice, or an esc50_class that is not an ESC-50 class
    name raises DatasetError with the line.
    """
    root = _check_root(root)
    meta = root / "labels.csv"
    if not meta.is_file():
        raise DatasetError(f"{root}: not a realworld layout (no labels.csv with columns file,label[,esc50_class])")
    try:
        with open(meta, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in REALWORLD_COLUMNS if c not in cols]
            if missing:
                raise DatasetError(f"{meta}: missing column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{meta}: not a readable CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{meta}: no rows")
    known_esc = set(esc50_class_names())
    parsed, seen, skipped = [], set(), []
    for line, r in enumerate(rows, start=2):
        fn = (r.get("file") or "").strip()
        label = " ".join((r.get("label") or "").split())
        esc = (r.get("esc50_class") or "").strip() or None
        if not fn:
            raise DatasetError(f"{meta}:{line}: empty file")
        if not label:
            raise DatasetError(f"{meta}:{line}: empty label for {fn}")
        if esc is not None and esc not in known_esc:
            raise DatasetError(f"{meta}:{line}: esc50_class {esc!r} is not an ESC-50 class name "
                               f"(e.g. dog, sea_waves, crackling_fire; empty when the clip is none)")
        if fn in seen:
            raise DatasetError(f"{meta}:{line}: {fn} is listed twice")
        seen.add(fn)
        path = root / fn
        if not path.is_file():
            skipped.append((str(path), "listed in labels.csv but not found"))
            continue
        parsed.append((path, label, esc))
    if not parsed:
        raise DatasetError(f"{root}: none of the {len(rows)} files in labels.csv were found")
    labels = sorted({lab for _, lab, _ in parsed})
    index = {lab: i for i, lab in enumerate(labels)}
    items = [Item(path, index[lab], None, esc) for path, lab, esc in parsed]
    return Dataset(root, "realworld", labels, items, None, skipped)


FORMATS = ("esc50", "folders", "realworld")


def load_dataset(root, fmt: str = "esc50") -> Dataset:
    if fmt == "esc50":
        return load_esc50(root)
    if fmt == "folders":
        return load_folders(root)
    if fmt == "realworld":
        return load_realworld(root)
    raise DatasetError(f"unknown dataset format '{fmt}' ({', '.join(FORMATS)})")


# ---------------------------------------------------------------------------------------------
# Feature cache


@dataclass
class Features:
    """Log-mels of the clips that decoded; ``items[i]`` owns ``mels[i]`` (frames, n_mels)."""

    items: list[Item]
    mels: list[np.ndarray]
    skipped: list[tuple[str, str]]
    cache_path: Path | None = None


def _frontend_fingerprint() -> str:
    """Hash of the log-mel code itself: a change to the front end (not only to FeatureConfig) must never
    serve features cached by the old code."""
    import nels.audio.features as F

    return hashlib.sha1(Path(F.__file__).read_bytes()).hexdigest()[:12]


def _cache_key(ds: Dataset, config: FeatureConfig) -> str:
    h = hashlib.sha1()
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(_frontend_fingerprint().encode())
    h.update(f"{ds.format}|{ds.expected_seconds}".encode())
    for it in ds.items:
        st = it.path.stat()
        h.update(f"{it.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{it.label}|{it.fold}\n".encode())
    return h.hexdigest()[:16]


def check_decoded(ds, items: list, skipped: list, log) -> None:
    """Log each clip of `ds` that was skipped ((path, why) pairs); a DatasetError when no clip decoded or
    every clip of some class was skipped (`items`: the clips that decoded)."""
    for p, why in skipped:
        log(f"skipped {p}: {why}")
    if not items:
        raise DatasetError(f"{ds.root}: no clip could be decoded ({len(skipped)} skipped)")
    present = {it.label for it in items}
    lost = [ds.labels[i] for i in range(len(ds.labels)) if i not in present]
    if lost:
        raise DatasetError(f"{ds.root}: every clip of class(es) {', '.join(lost)} was skipped (see above)")

def read_clip(it: Item, ds: Dataset, sr: int) -> tuple[np.ndarray | None, str | None]:
    """One clip of `ds` decoded at `sr`: (audio, None), or (None, why) for a clip a trainer skips and reports: one
    that does not decode, one whose length is not the dataset's (ESC-50: 5 s, within 0.1 s), one under 0.25 s."""
    from nels.audio.decode import decode

    try:
        x = decode(it.path, sr=sr)
    except NelsError as exc:
        return None, f"cannot decode ({exc})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a skipped clip
        return None, f"cannot decode ({exc.__class__.__name__}: {exc})"
    secs = x.size / sr
    if ds.expected_seconds is not None and abs(secs - ds.expected_seconds) > 0.1:
        return None, f"wrong length {secs:.2f} s (expected {ds.expected_seconds:g} s)"
    if secs < 0.25:
        return None, f"too short ({secs:.3f} s)"
    return x, None


def compute_features(ds: Dataset, config: FeatureConfig = FeatureConfig(), cache_dir=None,
                     log: Callable[[str], None] = print, progress: bool = True) -> Features:
    """Log-mel every clip of `ds` (or read them from the cache). Undecodable / wrong-length clips are skipped
    and reported through `log`; a dataset where nothing decodes is a DatasetError."""
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    key = _cache_key(ds, config)
    name = f"{ds.root.resolve().name}-{ds.format}-{key}"
    npy, idx = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    if npy.exists() and idx.exists():
        try:
            meta = json.loads(idx.read_text())
            flat = np.load(npy, mmap_mode=None)
            offs = meta["offsets"]
            by_path = {str(it.path): it for it in ds.items}
            items = [by_path[p] for p in meta["paths"]]
            mels = [flat[offs[i]:offs[i + 1]] for i in range(len(items))]
            skipped = [tuple(s) for s in meta["skipped"]]
            for p, why in skipped:
                log(f"skipped {p}: {why}")
            return Features(items, mels, list(ds.skipped) + skipped, npy)
        except Exception as exc:  # a broken cache is recomputed, never trusted
            log(f"feature cache {npy} unreadable ({exc}); recomputing")
    items, mels, skipped = [], [], []
    it_iter = ds.items
    if progress:
        from tqdm import tqdm

        it_iter = tqdm(ds.items, desc="features", unit="clip", leave=False)
    for it in it_iter:
        audio, why = read_clip(it, ds, config.sr)
        if audio is None:
            skipped.append((str(it.path), why))
            continue
        items.append(it)
        mels.append(logmel(audio, config))
    check_decoded(ds, items, skipped, log)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        offs = np.cumsum([0] + [m.shape[0] for m in mels]).tolist()
        tmp = npy.with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(mels).astype(np.float32))
        os.replace(tmp, npy)
        idx.write_text(json.dumps({"paths": [str(it.path) for it in items], "offsets": offs,
                                   "skipped": skipped, "config": config.to_dict()}))
    except OSError as exc:
        log(f"could not write feature cache under {cache_dir} ({exc}); continuing without it")
        npy = None
    return Features(items, mels, list(ds.skipped) + skipped, npy)
