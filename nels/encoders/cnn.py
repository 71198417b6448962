"""The trained sound-event CNN: log-mel segment -> class probabilities + an embedding for similarity.

Architecture (``SoundCNN``; sizes in ``arch`` are stored in model.json so other shapes load too):

* per-mel-band standardisation with statistics fixed from the training set (buffers, saved);
* a strided 5x5 stem + 2x2 max-pool: the 10 ms x 64-band input is cut to 40 ms x 16 bands at once,
  which is where most of the speed comes from (a 2 s segment is 50 x 16 positions after the stem);
* conv blocks (3x3 conv, BatchNorm, ReLU, x ``convs_per_block``) with 2x2 max-pooling between them;
* global pooling: mean over frequency, then mean + max over time (max catches short events such as a
  door knock, mean the textures such as rain), so any clip length is accepted;
* a ``emb_dim`` fully-connected layer whose (L2-normalised) output is the embedding used for acoustic
  similarity, then dropout and the linear classifier.

At inference BatchNorm is folded into the convolutions (``fuse_bn``). Clip-level predictions pool the
segment outputs with ``pool_segments``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from nels import config
from nels.audio.features import FeatureConfig
from nels.errors import ModelError
from nels.encoders.base import Encoded, LogMelEncoder, l2_normalize

FORMAT = "nels-cnn"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"

DEFAULT_ARCH = {
    "widths": [32, 64, 128, 256],
    "convs_per_block": 1,
    "emb_dim": 128,
    "stem_kernel": 5,
    "stem_stride": [2, 2],  # (time, frequency): [2, 1] keeps the full mel resolution past the stem
    "stem_pool": True,  # a 2x2 max-pool after the stem
    "dropout": 0.3,
    "freq_pool": "mean",  # 'mean' over the remaining bands, or 'flatten' (keeps where in the spectrum)
}


def _torch():
    import torch

    return torch


# What `nels train` builds unless told otherwise (DEFAULT_ARCH stays the reading of older model.json files).
# Chosen by ESC-50 fold-1 runs at 100 epochs (bench/RESULTS.md): a full-resolution 3x3 stem (no stride,
# no early 5x5/stride-2 cut of the 64 mel bands: +4.5 points) and a head that keeps where in the spectrum
# the final features lie instead of averaging over frequency (+2 points).
RECOMMENDED_ARCH = {
    "widths": [16, 32, 64, 128, 256],
    "stem_kernel": 3,
    "stem_stride": [1, 1],
    "freq_pool": "flatten",
}


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or AMX), where
    bf16 autocast is ~1.5-2x faster than float32 for the CNN. $NELS_BF16=0/1 overrides."""
    forced = config.bf16_override()
    if forced is not None:
        return forced
    try:
        return bool(_torch().ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a private API: absent means no
        return False


def _max_pool_2x2():
    """2x2 max-pooling (floor mode) as the max of four strided views: identical to nn.MaxPool2d(2) but
    3-10x faster on CPU, where PyTorch's pooling falls back to a slow kernel for some memory layouts."""
    torch = _torch()

    class MaxPool2x2(torch.nn.Module):
        def forward(self, x):
            h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
            x = x[:, :, :h, :w]
            return torch.maximum(torch.maximum(x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2]),
                                 torch.maximum(x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]))

    return MaxPool2x2()


def build_model(n_classes: int, n_mels: int, arch: dict | None = None):
    """Create the torch module (import of torch deferred so `import nels` stays cheap)."""
    torch = _torch()
    nn = torch.nn
    a = {**DEFAULT_ARCH, **(arch or {})}

    class SoundCNN(nn.Module):
        def __init__(self):
            super().__init__()
            w = list(a["widths"])
            k = int(a["stem_kernel"])
            self.register_buffer("mel_mean", torch.zeros(n_mels))
            self.register_buffer("mel_std", torch.ones(n_mels))
            st = tuple(int(v) for v in a["stem_stride"])
            layers = [nn.Conv2d(1, w[0], k, stride=st, padding=k // 2, bias=False), nn.BatchNorm2d(w[0]),
                      nn.ReLU(inplace=True)]
            if a["stem_pool"]:
                layers.append(_max_pool_2x2())
            cin = w[0]
            for i, cout in enumerate(w[1:]):
                for j in range(int(a["convs_per_block"])):
                    layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                    cin = cout
                if i < len(w) - 2:
                    layers.append(_max_pool_2x2())
            self.features = nn.Sequential(*layers)
            n_pools = int(bool(a["stem_pool"])) + max(0, len(w) - 2)
            self.min_frames = int(st[0]) * 2 ** n_pools
            self.flatten_freq = a["freq_pool"] == "flatten"
            bands = (n_mels + 2 * (k // 2) - k) // int(st[1]) + 1
            for _ in range(n_pools):
                bands //= 2
            self.emb = nn.Linear(2 * cin * (bands if self.flatten_freq else 1), int(a["emb_dim"]))
            self.drop = nn.Dropout(float(a["dropout"]))
            self.fc = nn.Linear(int(a["emb_dim"]), n_classes)

        def forward(self, x):
            """x: (batch, frames, n_mels) dB log-mels -> (logits, embedding before L2 norm)."""
            x = (x - self.mel_mean) / self.mel_std
            x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)  # (B, 1, T, F)
            x = self.features(x)  # channels_last: max-pooling is ~10x faster than in NCHW on CPU
            if self.flatten_freq:  # (B, C, T', F') -> (B, C * F', T')
                x = x.permute(0, 1, 3, 2).flatten(1, 2)
            else:
                x = x.mean(dim=3)  # over frequency -> (B, C, T')
            x = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
            e = torch.relu(self.emb(x))
            return self.fc(self.drop(e)), e

    return SoundCNN()


def fuse_bn(model) -> None:
    """Fold every BatchNorm2d that follows a Conv2d into that conv (inference only; in place)."""
    torch = _torch()
    nn = torch.nn
    seq = model.features
    mods = list(seq)
    out = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            bn = mods[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=True)
            with torch.no_grad():
                conv.weight.copy_(m.weight * scale[:, None, None, None])
                b = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
                conv.bias.copy_((b - bn.running_mean) * scale + bn.bias)
            out.append(conv)
            i += 2
        else:
            out.append(m)
            i += 1
    model.features = nn.Sequential(*out)


def pool_segments(values: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Clip-level scores from per-segment scores (n_segments, n_classes): 'mean' or 'max' over segments."""
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError("pool_segments expects a non-empty (n_segments, n_classes) array")
    return v.max(axis=0) if mode == "max" else v.mean(axis=0)


def segment_mels(mel: np.ndarray, window_frames: int = 200, hop_frames: int = 100) -> list[np.ndarray]:
    """Cut a clip's log-mel (frames, n_mels) into windows (default 2 s / 1 s hop at a 10 ms hop), the way the
    library segments audio; a clip shorter than one window is one segment; a tail adding >= hop is kept."""
    n = mel.shape[0]
    if n <= window_frames:
        return [mel]
    out = [mel[s:s + window_frames] for s in range(0, n - window_frames + 1, hop_frames)]
    last_end = (len(out) - 1) * hop_frames + window_frames
    if n - last_end >= hop_frames:
        out.append(mel[n - window_frames:])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CNNEncoder(LogMelEncoder):
    """The Encoder-protocol face of a trained SoundCNN (see module docstring)."""

    space = "cnn"

    def __init__(self, model, labels: list[str], feature_config: FeatureConfig, arch: dict,
                 name: str = "cnn", meta: dict | None = None, batch_size: int = 64):
        self.model = model
        self.labels = list(labels)
        self.feature_config = feature_config
        self.arch = {**DEFAULT_ARCH, **arch}
        self.dim = int(self.arch["emb_dim"])
        self.name = name
        self.meta = meta or {}
        self.batch_size = batch_size
        # bfloat16 where the CPU does it natively: ~1.6x faster, same top label (bench/RESULTS.md)
        self.bf16 = bf16_supported()
        self.model.eval()

    # -- inference -------------------------------------------------------------------------
    def forward_mels(self, mels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits, raw embeddings) for a list of (frames, n_mels) arrays of any lengths.

        Inputs are grouped by length so that no padding changes what the global pooling sees; inputs
        shorter than the network's minimum are tiled (repeated) up to it."""
        torch = _torch()
        n = len(mels)
        n_classes = len(self.labels)
        logits = np.zeros((n, n_classes), dtype=np.float32)
        embs = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return logits, embs
        min_t = self.model.min_frames
        groups: dict[int, list[int]] = {}
        prepared = []
        for i, m in enumerate(mels):
            m = np.asarray(m, dtype=np.float32)
            if m.ndim != 2 or m.shape[1] != self.feature_config.n_mels:
                raise ModelError(f"expected log-mels of shape (frames, {self.feature_config.n_mels}), got {m.shape}")
            if m.shape[0] < min_t:
                m = np.tile(m, (int(np.ceil(min_t / max(1, m.shape[0]))), 1))[:min_t] if m.shape[0] else \
                    np.full((min_t, m.shape[1]), -100.0, dtype=np.float32)
            prepared.append(m)
            groups.setdefault(m.shape[0], []).append(i)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for _, idx in groups.items():
                for s in range(0, len(idx), self.batch_size):
                    b = idx[s:s + self.batch_size]
                    x = torch.from_numpy(np.stack([prepared[i] for i in b]))
                    lo, e = self.model(x)
                    logits[b] = lo.float().numpy()
                    embs[b] = e.float().numpy()
        return logits, embs

    def encode_mels(self, mels: Sequence[np.ndarray]) -> Encoded:
        logits, embs = self.forward_mels(mels)
        return Encoded(l2_normalize(embs), softmax(logits), list(self.labels), embs)

    def predict_clip(self, mel: np.ndarray, pooling: str = "segments-mean-prob") -> np.ndarray:
        """Class probabilities of a whole clip: 'segments-mean-prob' (mean of 2 s window probabilities),
        'segments-mean-logit' (softmax of mean logits) or 'whole' (one pass over the whole clip)."""
        if pooling == "whole":
            return softmax(self.forward_mels([mel])[0])[0]
        lo, _ = self.forward_mels(segment_mels(mel))
        if pooling == "segments-mean-logit":
            return softmax(pool_segments(lo)[None])[0]
        return pool_segments(softmax(lo))

    # -- persistence -----------------------------------------------------------------------
    @classmethod
    def load(cls, path, expected_config: FeatureConfig | None = FeatureConfig()) -> "CNNEncoder":
        """Load a model folder. Refused (ModelError) when model.json or the weights are missing or
        broken, or when the model's FeatureConfig differs from `expected_config` (None: accept any)."""
        torch = _torch()
        path = Path(path)
        mj = path / "model.json"
        if not mj.is_file():
            raise ModelError(f"{path}: not a NELS model folder (no model.json)")
        try:
            meta = json.loads(mj.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"format_version {meta.get('format_version')} is newer than this NELS reads "
                                 f"({FORMAT_VERSION}); upgrade nels")
            labels = list(meta["labels"])
            arch = dict(meta["arch"])
            fc_dict = dict(meta["feature_config"])
            fconf = FeatureConfig(**fc_dict)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{mj}: broken model description ({exc})") from None
        if expected_config is not None and fconf != expected_config:
            diff = {k: (v, getattr(expected_config, k)) for k, v in fconf.to_dict().items()
                    if getattr(expected_config, k) != v}
            raise ModelError(f"{path}: trained with another feature config "
                             + ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in diff.items())
                             + "; retrain it with the current features")
        wf = path / meta.get("weights", WEIGHTS_FILE)
        if not wf.is_file():
            raise ModelError(f"{path}: weights file {wf.name} is missing")
        want = meta.get("weights_sha256")
        if want and _sha256(wf) != want:
            raise ModelError(f"{wf}: checksum mismatch (file is corrupt or was replaced); re-download or retrain")
        try:
            state = torch.load(wf, map_location="cpu", weights_only=True)
            model = build_model(len(labels), fconf.n_mels, arch)
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except Exception as exc:  # noqa: BLE001 - any failure here means broken weights
            raise ModelError(f"{wf}: cannot load weights ({exc.__class__.__name__}: {str(exc)[:200]})") from None
        model.eval()
        fuse_bn(model)
        return cls(model, labels, fconf, arch, name=meta.get("name", path.name), meta=meta)


def save_model(path, model, labels: list[str], feature_config: FeatureConfig, arch: dict,
               name: str, extra: dict | None = None) -> Path:
    """Write `path`/model.json + weights.pt (float16 weights: half the size, no accuracy change we could
    measure). `extra` (training command, metrics, ...) is merged into model.json."""
    torch = _torch()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() and "running" not in k and "mel_" not in k else v)
             for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / WEIGHTS_FILE)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "space": "cnn",
        "arch": {**DEFAULT_ARCH, **arch},
        "labels": list(labels),
        "feature_config": feature_config.to_dict() if hasattr(feature_config, "to_dict") else asdict(feature_config),
        "weights": WEIGHTS_FILE,
        "weights_sha256": _sha256(path / WEIGHTS_FILE),
        **(extra or {}),
    }
    (path / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def load_folder(path) -> CNNEncoder:
    """The CNN of a model folder made by `nels train` (the joint model, if any, lives beside it)."""
    path = Path(path)
    if not (path / "model.json").exists():
        raise ModelError(f"{path}: not a NELS model folder (no model.json); use 'baseline' or a folder made by"
                         f" 'nels train'")
    enc = CNNEncoder.load(path)
    enc.path = path.resolve()  # where its companions (the joint model, its vocabulary) live
    return enc

