"""A new model version = the serving model's layers below its classifier, unchanged, with a re-trained linear
classifier (W, b) over the vectors the loop trains on (possibly more classes), written in the model's own format.

The loop reads and writes classifiers through one table, FAMILIES (model.json "format" -> Family):

    "nels-cnn"   the own CNN (a folder without a format is one): the output layer fc of weights.pt is (W, b)
                 over the penultimate layer; a version replaces it (`save_with_head`).
    "nels-head"  a head on a pretrained backbone (`nels train --backbone yamnet`): a version is the same head
                 folder with its classifier replaced by one linear layer over the segment's mean window embedding
                 (the encoder's `raw`), stored in head.npz as a one-member, one-layer HeadNet without
                 standardisation and pooled "windows-mean-logit": softmax of the windows' mean log-softmax =
                 softmax(W mean(x) + b), so the encoder's segment probabilities are exactly the loop's; clips pool
                 "segments-mean-prob" (the mean of the segments' probabilities), as the loop measures them
                 (`save_backbone_head`). The seed's own classifier (an MLP ensemble per window) is no linear layer
                 over `raw`: it reads as (None, None, labels), the loop measures it through its encoder and
                 learns a version from a cold start (nels.learn.run).

A new model family is one entry: Family(read, write) under its model.json format.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nels.errors import NelsError

# (W (C, d), b (C,), labels); W and b are None when the classifier is not one linear layer over the loop's vectors
Classifier = tuple[np.ndarray | None, np.ndarray | None, list[str]]


def _meta(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))


# -- the own CNN ------------------------------------------------------------------------------------------------
def read_cnn_head(model_dir: Path) -> Classifier:
    """(W, b, labels) of a CNN folder's output layer fc."""
    import torch

    meta = _meta(model_dir)
    state = torch.load(Path(model_dir) / meta.get("weights", "weights.pt"), map_location="cpu", weights_only=True)
    return state["fc.weight"].float().numpy(), state["fc.bias"].float().numpy(), list(meta["labels"])


def save_with_head(base: Path, out: Path, W: np.ndarray, b: np.ndarray, labels: list[str], name: str,
                   extra: dict | None = None) -> Path:
    """Copy the model folder `base` to `out`, replacing its output layer by (W, b) over `labels`."""
    import torch

    base, out = Path(base), Path(out)
    meta = json.loads((base / "model.json").read_text())
    state = torch.load(base / meta.get("weights", "weights.pt"), map_location="cpu", weights_only=True)
    dtype = state["fc.weight"].dtype
    state["fc.weight"] = torch.from_numpy(np.asarray(W, np.float32)).to(dtype)
    state["fc.bias"] = torch.from_numpy(np.asarray(b, np.float32)).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "weights.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "weights.pt")
    backbone = meta.get("backbone_sha256") or meta.get("weights_sha256")  # the layers below the head: unchanged
    meta.update({"name": name, "labels": list(labels), "weights": "weights.pt", "parent": meta.get("name"),
                 "created_at": time.time(), "backbone_sha256": backbone,
                 "weights_sha256": hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest(), **(extra or {})})
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


# -- a head on a pretrained backbone ---------------------------------------------------------------------------
LINEAR_POOLING = "windows-mean-logit"  # a segment: softmax(W mean(windows) + b), exactly the loop's
LINEAR_CLIP_POOLING = "segments-mean-prob"  # a clip: the mean of its segments' probabilities, as the loop measures


def read_backbone_head(model_dir: Path) -> Classifier:
    """(W, b, labels) of a head folder whose classifier is one linear layer over the segment's mean window
    embedding (a version written by `save_backbone_head`, or any one-member one-layer head on the embedding pooled
    "windows-mean-logit": its standardisation folded into W and b); (None, None, labels) for any other head (an
    MLP ensemble, a head reading the backbone's scores, a fused CNN), whose segment probabilities no (W, b) over
    the loop's vectors reproduces."""
    from nels.encoders.head import WEIGHTS_FILE, HeadNet

    model_dir = Path(model_dir)
    meta = _meta(model_dir)
    labels = list(meta["labels"])
    if meta.get("input", "embedding") != "embedding" or meta.get("fusion") or meta.get("pooling") != LINEAR_POOLING:
        return None, None, labels
    with np.load(model_dir / meta.get("weights", WEIGHTS_FILE)) as arr:
        net = HeadNet.from_arrays({k: arr[k] for k in arr.files})
    if len(net.members) != 1 or len(net.members[0]) != 1:
        return None, None, labels
    w, b = net.members[0][0]
    W = w / net.std  # the net standardises its input: W ((x - mean) / std) + b
    return W.astype(np.float32), (b - W @ net.mean).astype(np.float32), labels


def save_backbone_head(base: Path, out: Path, W: np.ndarray, b: np.ndarray, labels: list[str], name: str,
                       extra: dict | None = None) -> Path:
    """Copy the head folder `base` to `out` with its classifier replaced by the linear layer (W, b) over `labels`
    (see the module docstring). The backbone and its weights' SHA-256 (`backbone_sha256`) are kept, so every
    version reads the same cached embeddings; a fused CNN and the base's training metrics are not carried over."""
    from nels.encoders.head import FORMAT, WEIGHTS_FILE, HeadNet

    base, out = Path(base), Path(out)
    meta = _meta(base)
    W, b = np.asarray(W, np.float32), np.asarray(b, np.float32)
    if W.ndim != 2 or b.shape != (W.shape[0],) or W.shape[0] != len(labels):
        raise NelsError(f"a linear head needs W (classes, dim) and b (classes,) for {len(labels)} labels,"
                        f" got {W.shape} and {b.shape}")
    d = W.shape[1]
    net = HeadNet([[(W, b)]], np.zeros(d, np.float32), np.ones(d, np.float32))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp.npz")
    np.savez(tmp, **net.arrays())
    os.replace(tmp, out / WEIGHTS_FILE)
    for k in ("fusion", "metrics", "training"):  # the base's, not this version's
        meta.pop(k, None)
    sha = hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()
    meta.update({"format": FORMAT, "name": name, "labels": list(labels), "parent": meta.get("name"),
                 "created_at": time.time(), "input": "embedding", "input_dim": d, "layers": [[d, len(labels)]],
                 "members": 1, "pooling": LINEAR_POOLING, "clip_pooling": LINEAR_CLIP_POOLING,
                 "classifier": "linear", "weights": WEIGHTS_FILE, "weights_sha256": sha, **(extra or {})})
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


# -- the one place the loop looks a model's format up ------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """How the loop reads a model format's classifier and writes a version with a new one.

    read(model_dir) -> (W, b, labels), W and b None when the classifier is no linear layer over the loop's vectors.
    write(base, out, W, b, labels, name, extra) -> out: `base` with its classifier replaced by (W, b)."""

    read: Callable[[Path], Classifier]
    write: Callable[..., Path]


FAMILIES: dict[str, Family] = {
    "nels-cnn": Family(read_cnn_head, save_with_head),
    "nels-head": Family(read_backbone_head, save_backbone_head),
}


def model_format(model_dir: str | Path) -> str:
    """A model folder's format (model.json "format"; a CNN folder may have none)."""
    return _meta(Path(model_dir)).get("format") or "nels-cnn"


def family(model_dir: str | Path) -> Family:
    """The Family of a model folder; NelsError for a format the loop cannot re-train."""
    f = Path(model_dir) / "model.json"
    if not f.is_file():
        raise NelsError(f"{model_dir}: not a model folder (no model.json)")
    try:
        fmt = model_format(model_dir)
    except (ValueError, OSError, AttributeError) as exc:
        raise NelsError(f"{f}: broken model description ({exc})") from None
    if fmt not in FAMILIES:
        raise NelsError(f"{model_dir}: nels run re-trains the classifier of a {' or '.join(FAMILIES)} model, not of"
                        f" a {fmt!r} one")
    return FAMILIES[fmt]
