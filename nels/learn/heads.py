"""A new model version = the same CNN backbone with a re-trained output layer (possibly more classes)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np


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
