"""Your own classes on a pretrained backbone: a small classifier head on the backbone's window embeddings,
behind the Encoder seam.

    create_encoder("head:PATH")      # a folder made by `nels train --backbone yamnet`
    create_encoder(PATH)             # the same (model.json says "format": "nels-head")

A head folder holds `model.json` (format "nels-head": the backbone's spec and weights SHA-256, the labels,
the layer sizes, the clip pooling chosen on validation, metrics, the command that made it, the licence) and
`head.npz` (the weights of every ensemble member, float32; numpy at inference: no torch needed).

How a segment is scored (NELS's 2 s / 1 s segments, as the backbone frames them): the backbone's front end
cuts each segment into its windows (YAMNet: the 0.975 s windows of the clip's 0.48 s grid that lie inside the
segment), `backbone.window_outputs` runs each unique window once and returns its embedding; the head gives
each window class log-probabilities (an ensemble: the log of its members' mean probability), and a segment's
probabilities pool its windows the model's way (`pooling`: "windows-mean-prob", the mean of the windows'
probabilities, or "windows-mean-logit", the softmax of their mean log-probability). The segment's vector is the
backbone's own (the mean window embedding, L2-normalised), so acoustic search reads the backbone's space.

A clip (`clip_probs`, what `nels evaluate classification` scores) pools every unique window of the clip's
segments the same way: the windows the head was validated on at training time (`nels.training.head`). A head
whose model.json says "clip_pooling": "segments-mean-prob" (a version written by `nels run`, whose classifier is
one linear layer over the segment's mean window embedding: `nels.learn.heads`) scores a clip by the mean of its
segments' probabilities instead, as the loop measured it on its held-out set.

An optional late fusion with a NELS CNN (model.json "fusion": {"model": folder inside this one, "weight": w};
chosen on validation clips at training time) mixes the CNN's segment log-probabilities into the head's:
log p = (1 - w) log p_head + w log p_cnn, renormalised.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nels.encoders.base import Encoded, encode_waveform, l2_normalize, resample
from nels.errors import ModelError

FORMAT = "nels-head"
FORMAT_VERSION = 1
WEIGHTS_FILE = "head.npz"
POOLINGS = ("windows-mean-prob", "windows-mean-logit")
SEGMENTS_MEAN = "segments-mean-prob"  # a clip pooling: the mean of the clip's segment probabilities
CLIP_POOLINGS = (*POOLINGS, SEGMENTS_MEAN)
INPUTS = ("embedding", "embedding+scores")  # what the head reads per window: the embedding, or it and the
# backbone's own class scores as log-odds (YAMNet's 521 AudioSet scores: a prior learnt on 2M clips)


def head_input(kind: str, emb: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """The head's per-window input of kind `kind` (one of INPUTS)."""
    emb = np.asarray(emb, np.float32)
    if kind == "embedding":
        return emb
    if scores is None:
        raise ModelError("this head reads the backbone's class scores, and the backbone gives none")
    s = np.asarray(scores, np.float32)
    eps = np.float32(1 / 512)  # YAMNet's scores come in steps of 1/256
    return np.concatenate([emb, np.log(s + eps) - np.log(1 - s + eps)], axis=1)


def is_head_folder(path) -> bool:
    """Whether `path` is a folder whose model.json says format "nels-head"."""
    mj = Path(path) / "model.json"
    if not mj.is_file():
        return False
    try:
        return json.loads(mj.read_text(encoding="utf-8")).get("format") == FORMAT
    except (ValueError, OSError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


class HeadNet:
    """The head's forward pass in numpy: per member, standardise the input, then Linear (+ ReLU between
    layers); the ensemble's output is the log of the members' mean softmax probability."""

    def __init__(self, members: list[list[tuple[np.ndarray, np.ndarray]]], mean: np.ndarray, std: np.ndarray):
        self.members = members
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.in_dim = int(self.mean.size)
        self.n_classes = int(members[0][-1][0].shape[0])

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """(n, in_dim) window embeddings -> (n, n_classes) log-probabilities."""
        x = (np.asarray(x, np.float32) - self.mean) / self.std
        if x.shape[0] == 0:
            return np.zeros((0, self.n_classes), np.float32)
        outs = []
        for layers in self.members:
            z = x
            for j, (w, b) in enumerate(layers):
                z = z @ w.T + b
                if j < len(layers) - 1:
                    z = np.maximum(z, 0.0)
            outs.append(log_softmax(z))
        if len(outs) == 1:
            return outs[0]
        stacked = np.stack(outs)
        m = stacked.max(axis=0)
        return (m + np.log(np.exp(stacked - m).mean(axis=0))).astype(np.float32)

    # -- persistence -----------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "std": self.std}
        for i, layers in enumerate(self.members):
            for j, (w, b) in enumerate(layers):
                out[f"m{i}_w{j}"] = np.asarray(w, np.float32)
                out[f"m{i}_b{j}"] = np.asarray(b, np.float32)
        return out

    @classmethod
    def from_arrays(cls, arr) -> "HeadNet":
        members = []
        i = 0
        while f"m{i}_w0" in arr:
            layers, j = [], 0
            while f"m{i}_w{j}" in arr:
                layers.append((np.asarray(arr[f"m{i}_w{j}"], np.float32), np.asarray(arr[f"m{i}_b{j}"], np.float32)))
                j += 1
            members.append(layers)
            i += 1
        if not members:
            raise ValueError("no ensemble member in the weights")
        for layers in members:
            for (w, _), (w2, _) in zip(layers, layers[1:]):
                if w2.shape[1] != w.shape[0]:
                    raise ValueError("layer shapes do not chain")
        net = cls(members, arr["mean"], arr["std"])
        if any(layers[0][0].shape[1] != net.in_dim for layers in members):
            raise ValueError("input size differs from the standardisation statistics")
        if any(layers[-1][0].shape[0] != net.n_classes for layers in members):
            raise ValueError("members disagree on the number of classes")
        return net


def pool(log_probs: np.ndarray, pooling: str) -> np.ndarray:
    """(w, C) window log-probabilities -> (C,) probabilities, the model's way (see the module docstring)."""
    if pooling == "windows-mean-logit":
        return np.exp(log_softmax(log_probs.mean(axis=0)))
    return np.exp(log_probs).mean(axis=0)


def fuse(log_head: np.ndarray, log_other: np.ndarray, weight: float) -> np.ndarray:
    """Late fusion of two models' log-probabilities (renormalised log-probabilities out)."""
    return log_softmax((1.0 - weight) * log_head + weight * log_other)


def save_head(path, net: HeadNet, labels: list[str], backbone, pooling: str, name: str,
              extra: dict | None = None) -> Path:
    """Write `path`/model.json + head.npz; `backbone` is the encoder the head reads (its spec, name, dim and
    weights SHA-256 are recorded so the head is never run on another backbone's embeddings)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (WEIGHTS_FILE + ".tmp.npz")
    np.savez(tmp, **net.arrays())
    os.replace(tmp, path / WEIGHTS_FILE)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "backbone": getattr(backbone, "spec", None) or backbone.space,
        "backbone_name": backbone.name,
        "backbone_sha256": getattr(backbone, "meta", {}).get("weights_sha256"),
        "input_dim": int(net.in_dim),
        "labels": list(labels),
        "layers": [[int(w.shape[1]), int(w.shape[0])] for w, _ in net.members[0]],
        "members": len(net.members),
        "pooling": pooling,
        "weights": WEIGHTS_FILE,
        "weights_sha256": _sha256(path / WEIGHTS_FILE),
        **(extra or {}),
    }
    (path / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def _backbone(spec: str, sha: str | None, where: Path):
    from nels.encoders.registry import create_encoder

    try:
        bb = create_encoder(spec)
    except ModelError as exc:
        raise ModelError(f"{where}: this head reads the embeddings of the backbone '{spec}', which cannot be"
                         f" loaded: {exc}") from None
    if not hasattr(bb, "window_outputs"):
        raise ModelError(f"{where}: the backbone '{spec}' ({bb.name}) does not expose its window embeddings")
    mine = getattr(bb, "meta", {}).get("weights_sha256")
    if sha and mine and sha != mine:
        raise ModelError(f"{where}: trained on the embeddings of '{spec}' with weights {sha[:12]}, but the weights"
                         f" found now are {mine[:12]}: install the same backbone weights or retrain the head")
    return bb


class HeadEncoder:
    """A trained head on a backbone, through the Encoder seam (see the module docstring)."""

    def __init__(self, net: HeadNet, labels: list[str], backbone, pooling: str, name: str, meta: dict,
                 path: Path | None = None, fusion=None):
        self.net, self.backbone, self.pooling = net, backbone, pooling
        self.labels = list(labels)
        self.name = name
        self.meta = meta
        self.path = path
        self.space = f"head-{backbone.space}"
        self.dim = backbone.dim
        self.sample_rate = backbone.sample_rate
        self.window, self.hop = backbone.window, backbone.hop
        self.fusion = fusion  # (CNN encoder, weight) or None
        self.input = meta.get("input", "embedding")
        self.clip_pooling = meta.get("clip_pooling") or pooling  # how clip_probs pools a clip (CLIP_POOLINGS)

    # -- the seam ------------------------------------------------------------------------------------------------
    def frontend(self):
        front = self.backbone.frontend()
        if self.fusion is None:
            return front
        other = self.fusion[0].frontend()
        return lambda x, start: (front(x, start), other(x, start))

    def _split(self, features):
        if self.fusion is None:
            return list(features), None
        return [f[0] for f in features], [f[1] for f in features]

    def encode_features(self, features: Sequence[Any]) -> Encoded:
        mine, other = self._split(features)
        if not mine:
            return Encoded(np.zeros((0, self.dim), np.float32), np.zeros((0, len(self.labels)), np.float32),
                           list(self.labels), np.zeros((0, self.dim), np.float32))
        rows, scores, emb = self.backbone.window_outputs(mine)
        lp = self.net.log_probs(head_input(self.input, emb, scores))
        if self.fusion is not None:
            seg_lp = np.stack([np.log(np.maximum(pool(lp[r], self.pooling), 1e-30)) for r in rows])
            cnn_lp = np.log(np.maximum(self.fusion[0].encode_features(other).probs, 1e-30))
            probs = np.exp(fuse(seg_lp, cnn_lp, self.fusion[1]))
        else:
            probs = np.stack([pool(lp[r], self.pooling) for r in rows])
        raw = np.stack([emb[r].mean(axis=0) for r in rows]).astype(np.float32)
        return Encoded(l2_normalize(raw), probs.astype(np.float32), list(self.labels), raw)

    def encode(self, waveform: np.ndarray, sample_rate: int) -> Encoded:
        return encode_waveform(self, waveform, sample_rate)

    # -- clip level ----------------------------------------------------------------------------------------------
    def clip_log_probs(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """(w, C) head log-probabilities of every unique backbone window of the clip's segments."""
        w = clip_windows(self.backbone, waveform, sample_rate)
        return self.net.log_probs(head_input(self.input, w.emb, w.scores))

    def clip_probs(self, waveform: np.ndarray, sample_rate: int, pooling: str | None = None) -> np.ndarray:
        """(C,) class probabilities of a whole clip: its windows pooled the model's way (or `pooling`, one of
        CLIP_POOLINGS); with a fused CNN, the CNN's clip probabilities (its own pooling) fused in.
        "segments-mean-prob": the mean of the clip's segment probabilities (fused per segment, if fused; a clip
        with no segment holding sound is encoded whole)."""
        if pooling is not None and pooling not in CLIP_POOLINGS:
            raise ModelError(f"a head pools its windows with one of {', '.join(POOLINGS)} (or its segments with"
                             f" {SEGMENTS_MEAN}), not {pooling!r}")
        how = pooling or self.clip_pooling
        if how == SEGMENTS_MEAN:
            return encode_waveform(self, waveform, sample_rate, whole_if_empty=True).probs.mean(axis=0)
        p = pool(self.clip_log_probs(waveform, sample_rate), how)
        if self.fusion is None:
            return p
        cnn, w = self.fusion
        x = resample(np.asarray(waveform, np.float32).reshape(-1), sample_rate, cnn.sample_rate)
        from nels.audio.features import logmel

        pc = cnn.predict_clip(logmel(x, cnn.feature_config), cnn.meta.get("pooling", "segments-mean-prob"))
        return np.exp(fuse(np.log(np.maximum(p, 1e-30)), np.log(np.maximum(pc, 1e-30)), w))


@dataclass
class ClipWindows:
    """The unique backbone windows of a clip's segments: rows[i] = segment i's windows; emb (m, d); scores
    (m, n_labels) or None; level (m,) RMS level of each window's audio in dB."""

    rows: list
    emb: np.ndarray
    scores: np.ndarray | None
    level: np.ndarray


def clip_windows(backbone, waveform: np.ndarray, sample_rate: int) -> ClipWindows:
    """The unique backbone windows of a clip's segments, framed as the library frames it (`segment_array` with
    the backbone's window and hop, digital silence skipped; a clip with no such segment is framed whole)."""
    from nels.audio.segment import Segment, SegmentConfig, segment_array

    x = resample(np.asarray(waveform, np.float32).reshape(-1), sample_rate, backbone.sample_rate)
    segs = segment_array(x, SegmentConfig(window=backbone.window, hop=backbone.hop), backbone.sample_rate)
    if not segs and x.size:
        segs = [Segment(0.0, x.size / backbone.sample_rate, x)]
    front = backbone.frontend()
    feats = [front(s.audio, int(round(s.start * backbone.sample_rate))) for s in segs]
    if feats:
        rows, scores, emb = backbone.window_outputs(feats)
    else:
        rows, scores, emb = [], None, np.zeros((0, backbone.dim), np.float32)
    lev = np.zeros(len(emb), np.float32)
    for f, s, r in zip(feats, segs, rows):  # rows[i][j] is the unique index of segment i's j-th window
        wins = getattr(f, "windows", None)
        for j, u in enumerate(r):
            a = wins[j] if wins is not None and len(wins) == len(r) else s.audio
            lev[u] = 10.0 * np.log10(float(np.mean(np.square(a, dtype=np.float64))) + 1e-10)
    return ClipWindows(rows, emb, scores, lev)


def load_head(path, backbone=None) -> HeadEncoder:
    """A head folder -> HeadEncoder. Refused (ModelError) when model.json or the weights are missing or broken,
    or when the backbone is missing or has other weights than the head was trained on."""
    path = Path(path)
    mj = path / "model.json"
    if not mj.is_file():
        raise ModelError(f"{path}: not a NELS model folder (no model.json)")
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"format_version {meta.get('format_version')} is newer than this NELS reads; upgrade nels")
        labels = list(meta["labels"])
        pooling = meta.get("pooling", POOLINGS[0])
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if meta.get("clip_pooling", pooling) not in CLIP_POOLINGS:
            raise ValueError(f"clip_pooling {meta.get('clip_pooling')!r} is not one of {CLIP_POOLINGS}")
        spec = str(meta["backbone"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{mj}: broken model description ({exc})") from None
    wf = path / meta.get("weights", WEIGHTS_FILE)
    if not wf.is_file():
        raise ModelError(f"{path}: weights file {wf.name} is missing")
    if meta.get("weights_sha256") and _sha256(wf) != meta["weights_sha256"]:
        raise ModelError(f"{wf}: checksum mismatch (file is corrupt or was replaced); retrain the head")
    try:
        with np.load(wf) as arr:
            net = HeadNet.from_arrays({k: arr[k] for k in arr.files})
    except Exception as exc:  # noqa: BLE001 - any failure here means broken weights
        raise ModelError(f"{wf}: cannot load the head's weights ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    if net.n_classes != len(labels):
        raise ModelError(f"{wf}: {net.n_classes} outputs for {len(labels)} labels")
    bb = backbone if backbone is not None else _backbone(spec, meta.get("backbone_sha256"), path)
    kind = meta.get("input", "embedding")
    if kind not in INPUTS:
        raise ModelError(f"{mj}: input {kind!r} is not one of {INPUTS}")
    probe = head_input(kind, np.zeros((1, bb.dim), np.float32),
                       np.zeros((1, len(bb.labels or [])), np.float32) if kind != "embedding" else None)
    if net.in_dim != probe.shape[1]:
        raise ModelError(f"{path}: the head reads {net.in_dim} values per window, the backbone gives {probe.shape[1]}")
    fusion = None
    fz = meta.get("fusion")
    if fz:
        from nels.encoders.cnn import CNNEncoder

        cnn = CNNEncoder.load(path / fz["model"])
        if cnn.labels != labels:
            raise ModelError(f"{path}: the fused CNN has other classes than the head")
        if cnn.sample_rate != bb.sample_rate:
            raise ModelError(f"{path}: the fused CNN reads {cnn.sample_rate} Hz, the backbone {bb.sample_rate} Hz")
        fusion = (cnn, float(fz["weight"]))
    enc = HeadEncoder(net, labels, bb, pooling, meta.get("name", path.name), meta, path.resolve(), fusion)
    enc.input = kind
    return enc


def load_folder(arg: str | None):
    """The registry's factory: `create_encoder("head:PATH")` (a head on a backbone, or classes added to a model by
    `nels train --add`, by model.json's format)."""
    if not arg:
        raise ModelError("'head' needs a folder: head:PATH (made by 'nels train --backbone yamnet')")
    p = Path(arg).expanduser()
    if not (p / "model.json").is_file():
        raise ModelError(f"{p}: not a head folder (no model.json); make one with 'nels train --backbone yamnet'")
    try:
        fmt = json.loads((p / "model.json").read_text(encoding="utf-8")).get("format")
    except (ValueError, OSError, AttributeError):
        fmt = None
    return load_addon(p) if fmt == ADDON_FORMAT else load_head(p)


# -- new classes beside a model's own (`nels train --add`) ---------------------------------------------------------
ADDON_FORMAT = "nels-addon"
ADDON_WEIGHTS = "addon.npz"


class AddOnEncoder:
    """A model with classes added beside its own: the base encoder unchanged (its vectors, its classes, its joint
    space) plus a small classifier on the base's segment vectors for the new classes.

    The added classifier is a softmax over the new classes and "none of them" (trained on the library's own
    segments as the "none" examples, `nels.training.addon`); a segment's probabilities are the base's, followed by
    the added ones (the new classes' softmax probabilities, "none" left out). So a text search for an old class
    reads the same probabilities as before, and a new class cannot take every segment."""

    def __init__(self, base, labels: list[str], w: np.ndarray, b: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 meta: dict, path: Path | None = None):
        self.base = base
        # the joint space trained on the base's vectors reads ours unchanged (classes added twice: the first base)
        self.joint_base = getattr(base, "joint_base", base)
        self.new_labels = list(labels)
        self.w, self.b = np.asarray(w, np.float32), np.asarray(b, np.float32)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.meta, self.path = meta, path
        self.name = meta["name"]
        self.space, self.dim = base.space, base.dim
        self.sample_rate, self.window, self.hop = base.sample_rate, base.window, base.hop
        self.labels = list(base.labels or []) + self.new_labels

    def added_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) base vectors -> (n, new classes) probabilities."""
        x = (np.asarray(embeddings, np.float32) - self.mean) / self.std
        return np.exp(log_softmax(x @ self.w.T + self.b))[:, :len(self.new_labels)].astype(np.float32)

    def frontend(self):
        return self.base.frontend()

    def encode_features(self, features: Sequence[Any]) -> Encoded:
        out = self.base.encode_features(features)
        added = self.added_probs(out.embeddings)
        probs = added if out.probs is None else np.concatenate([np.asarray(out.probs, np.float32), added], axis=1)
        return Encoded(out.embeddings, probs, list(self.labels), out.raw)

    def encode(self, waveform: np.ndarray, sample_rate: int) -> Encoded:
        return encode_waveform(self, waveform, sample_rate)


def save_addon(path, base_spec: str, base, labels: list[str], w, b, mean, std, name: str,
               extra: dict | None = None) -> Path:
    """Write `path`/model.json (format "nels-addon": the base's spec, name and weights SHA-256, the new labels) and
    addon.npz."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (ADDON_WEIGHTS + ".tmp.npz")
    np.savez(tmp, w=np.asarray(w, np.float32), b=np.asarray(b, np.float32), mean=np.asarray(mean, np.float32),
             std=np.asarray(std, np.float32))
    os.replace(tmp, path / ADDON_WEIGHTS)
    sha = _sha256(path / ADDON_WEIGHTS)
    base_sha = getattr(base, "meta", {}).get("weights_sha256") or ""
    meta = {"format": ADDON_FORMAT, "format_version": 1, "name": name, "base": str(base_spec),
            "base_name": base.name, "base_sha256": base_sha or None, "labels": list(labels),
            "base_labels": list(base.labels or []), "input_dim": int(np.asarray(w).shape[1]),
            "weights": ADDON_WEIGHTS, "addon_sha256": sha,
            # what the library records and checks: these exact base weights with these added ones
            "weights_sha256": hashlib.sha256(f"{base_sha}:{sha}".encode()).hexdigest(), **(extra or {})}
    (path / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def load_addon(path) -> AddOnEncoder:
    """An add-on folder -> AddOnEncoder; refused (ModelError) when it is broken or its base is not the model it
    was trained on."""
    from nels.encoders.registry import create_encoder

    path = Path(path)
    mj = path / "model.json"
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
        if meta.get("format") != ADDON_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {ADDON_FORMAT!r}")
        labels, spec = list(meta["labels"]), str(meta["base"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{mj}: broken model description ({exc})") from None
    wf = path / meta.get("weights", ADDON_WEIGHTS)
    if not wf.is_file():
        raise ModelError(f"{path}: weights file {wf.name} is missing")
    if meta.get("addon_sha256") and _sha256(wf) != meta["addon_sha256"]:
        raise ModelError(f"{wf}: checksum mismatch (file is corrupt or was replaced); train the classes again")
    try:
        with np.load(wf) as arr:
            w, b, mean, std = (np.asarray(arr[k], np.float32) for k in ("w", "b", "mean", "std"))
    except Exception as exc:  # noqa: BLE001 - any failure here means broken weights
        raise ModelError(f"{wf}: cannot load the added classes' weights ({exc.__class__.__name__})") from None
    try:
        base = create_encoder(spec)
    except ModelError as exc:
        raise ModelError(f"{path}: the classes were added to '{spec}', which cannot be loaded: {exc}") from None
    mine = getattr(base, "meta", {}).get("weights_sha256")
    if base.name != meta.get("base_name") or (meta.get("base_sha256") and mine and mine != meta["base_sha256"]):
        raise ModelError(f"{path}: the classes were added to {meta.get('base_name')}, but '{spec}' is now {base.name}"
                         f" (other weights): train them again with 'nels train --add'")
    if w.shape != (len(labels) + 1, base.dim) or b.shape != (len(labels) + 1,) or mean.shape != (base.dim,):
        raise ModelError(f"{wf}: weights of shape {w.shape} do not fit {len(labels)} classes on {base.dim}-d vectors")
    return AddOnEncoder(base, labels, w, b, mean, std, meta, path.resolve())
