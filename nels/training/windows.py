"""The backbone windows of a dataset, computed once and cached: what a classifier head (`nels.training.head`)
and a joint space on a head (`nels.training.joint`) train on.

Each clip is framed as the library frames it (2 s / 1 s segments, digital silence skipped, the backbone's
windows inside them: `nels.encoders.head.clip_windows`); the embeddings are cached per (dataset files, backbone
weights, view) as an .npz under `$NELS_CACHE/backbone`. A *view* ([offset seconds, gain dB]) shifts the window
grid and the level before the backbone sees the audio.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nels import config
from nels.training.datasets import check_decoded, read_clip

CACHE_VERSION = 2  # bump when the framing or the content of the cached windows changes

@dataclass
class Windows:
    """Backbone window embeddings of the clips of a dataset that decoded: window j belongs to clip owner[j]
    (an index into `items`), its level (RMS, dB) is level[j]."""

    items: list
    emb: np.ndarray  # (m, d) float32
    owner: np.ndarray  # (m,) int
    level: np.ndarray  # (m,) float32
    skipped: list
    scores: np.ndarray | None = None  # (m, n_labels) the backbone's class scores, where it has classes

    def of(self, clip: int) -> np.ndarray:
        return np.flatnonzero(self.owner == clip)


def _cache_key(ds, backbone, view) -> str:
    h = hashlib.sha1()
    sha = getattr(backbone, "meta", {}).get("weights_sha256") or ""
    h.update(json.dumps([CACHE_VERSION, backbone.name, sha, backbone.window, backbone.hop, list(view),
                         ds.format, ds.expected_seconds]).encode())
    for it in ds.items:
        st = it.path.stat()
        h.update(f"{it.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{it.label}|{it.fold}\n".encode())
    return h.hexdigest()[:16]


def window_embeddings(ds, backbone, cache_dir=None, view=(0.0, 0.0), log=print, progress: bool = False) -> Windows:
    """The backbone windows of every clip of `ds` (cached; see the module docstring). `view` = (offset seconds,
    gain dB): the clip is cut at the offset and scaled before framing. Undecodable / wrong-length clips are
    skipped and reported (a class left without clips is a DatasetError)."""
    from nels.encoders.head import clip_windows

    cache_dir = Path(cache_dir) if cache_dir else config.cache_dir() / "backbone"
    key = _cache_key(ds, backbone, view)
    f = cache_dir / f"{ds.root.resolve().name}-{ds.format}-{backbone.space}-{key}.npz"
    by_path = {str(it.path): it for it in ds.items}
    if f.exists():
        try:
            with np.load(f, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                items = [by_path[p] for p in meta["paths"]]
                out = Windows(items, z["emb"].astype(np.float32), z["owner"].astype(int), z["level"].astype(np.float32),
                              [tuple(s) for s in meta["skipped"]], z["scores"] if "scores" in z.files else None)
            for p, why in out.skipped:
                log(f"skipped {p}: {why}")
            out.skipped = list(ds.skipped) + out.skipped
            return out
        except Exception as exc:  # noqa: BLE001 - a broken cache is recomputed, never trusted
            log(f"window cache {f} unreadable ({exc}); recomputing")
    offset, gain = float(view[0]), float(view[1])
    items, embs, owners, levels, scores, skipped = [], [], [], [], [], []
    sr = backbone.sample_rate
    it_iter = ds.items
    if progress:
        from tqdm import tqdm

        it_iter = tqdm(ds.items, desc=f"{backbone.space} windows", unit="clip", leave=False)
    t0 = time.time()
    for it in it_iter:
        x, why = read_clip(it, ds, sr)
        if x is None:
            skipped.append((str(it.path), why))
            continue
        if offset > 0:
            x = x[int(round(offset * sr)):]
        if gain:
            x = np.clip(x * np.float32(10 ** (gain / 20)), -1.0, 1.0)
        cw = clip_windows(backbone, x, sr)
        emb, lev = cw.emb, cw.level
        if not len(emb):
            skipped.append((str(it.path), "no window holds sound"))
            continue
        if cw.scores is not None:
            scores.append(np.asarray(cw.scores, np.float32))
        owners.append(np.full(len(emb), len(items)))
        items.append(it)
        embs.append(emb.astype(np.float32))
        levels.append(lev)
    check_decoded(ds, items, skipped, log)
    out = Windows(items, np.concatenate(embs), np.concatenate(owners), np.concatenate(levels), skipped,
                  np.concatenate(scores) if len(scores) == len(embs) else None)
    log(f"{backbone.space} windows of {len(items)} clips (view offset {offset:g} s, gain {gain:+g} dB): "
        f"{len(out.emb)} windows in {time.time() - t0:.0f} s")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp.npz")
        extra = {} if out.scores is None else {"scores": out.scores}
        np.savez(tmp, emb=out.emb, owner=out.owner.astype(np.int32), level=out.level, **extra,
                 meta=np.array(json.dumps({"paths": [str(i.path) for i in items], "skipped": skipped})))
        tmp.replace(f)
    except OSError as exc:
        log(f"could not write the window cache under {cache_dir} ({exc}); continuing without it")
    out.skipped = list(ds.skipped) + skipped
    return out
