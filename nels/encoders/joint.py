"""The cross-modal joint space: twin towers put sounds and words in one embedding space.

Why: similar words are not similar sounds ("car brakes" vs "car horn") and similar sounds are not
similar meanings (an engine's rumble vs a heart murmur). The audio tower (on the CNN's segment
embedding) and the text tower (on the all-MiniLM-L6-v2 sentence embedding) are trained so that a
sound lands near the words for it, whatever the words' neighbours are.

Two losses, both trained and measured (bench/RESULTS.md), the better one shipped:

* ``contrastive`` (Elizalde, Zarar & Raj, ICASSP 2019): siamese pairs (audio, text) labelled
  same-class / different-class; loss = y d^2 + (1 - y) max(0, margin - d)^2 on L2-normalised outputs,
  with hard-negative mining (each audio's closest wrong-class text in the batch, and vice versa).
* ``infonce`` (CLAP-style): a batch holds one clip per class, each paired with one of its class's
  phrases; symmetric cross-entropy over the in-batch similarity matrix with a learned temperature.

The text side of every pair is a phrase from the vocabulary (name, description, synonyms), so that
lexical and acoustic similarity both shape the space.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nels.errors import ModelError
from nels.encoders.base import Encoded

FORMAT = "nels-joint"
WEIGHTS = "weights.pt"
TEXT_DIM = 384


def _torch():
    import torch

    return torch


def build_towers(audio_dim: int, text_dim: int = TEXT_DIM, dim: int = 128, hidden: int = 256, dropout: float = 0.2,
                 text_tower: str = "mlp"):
    """Audio tower: an MLP. Text tower: an MLP, or "linear" (one projection of the MiniLM space, which
    keeps its geometry and so generalises better to wordings never seen in training)."""
    torch = _torch()
    nn = torch.nn

    def tower(d_in):
        return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                             nn.Linear(hidden, dim))

    class Towers(nn.Module):
        def __init__(self):
            super().__init__()
            self.audio = tower(audio_dim)
            self.text = tower(text_dim) if text_tower == "mlp" else nn.Linear(text_dim, dim)
            self.log_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

        def embed_audio(self, x):
            return torch.nn.functional.normalize(self.audio(x), dim=-1)

        def embed_text(self, x):
            return torch.nn.functional.normalize(self.text(x), dim=-1)

    return Towers()


# -- losses --------------------------------------------------------------------------------------
def contrastive_loss(a, t, ya, yt, margin: float = 1.0):
    """Siamese contrastive loss over all audio-text pairs of a batch, with hard-negative mining.

    a, t: (Na, d), (Nt, d) normalised; ya, yt: class ids. Every positive pair counts; of the
    negatives, each audio's and each text's hardest (closest) one, plus the mean over the rest.
    """
    torch = _torch()
    d = torch.cdist(a, t)  # (Na, Nt), in [0, 2]
    same = (ya[:, None] == yt[None, :]).float()
    pos = (same * d.pow(2)).sum() / same.sum().clamp(min=1)
    neg = torch.clamp(margin - d, min=0).pow(2) * (1 - same)
    big = 1e4 * same  # exclude positives from the hardest-negative search
    hard_a = torch.clamp(margin - (d + big).min(dim=1).values, min=0).pow(2).mean()
    hard_t = torch.clamp(margin - (d + big).min(dim=0).values, min=0).pow(2).mean()
    return pos + 0.5 * (hard_a + hard_t) + neg.sum() / (1 - same).sum().clamp(min=1)


def infonce_loss(a, t, log_scale):
    """Symmetric InfoNCE over a batch whose i-th audio and i-th text share a class (classes distinct)."""
    torch = _torch()
    logits = a @ t.T * log_scale.exp().clamp(max=100)
    target = torch.arange(len(a))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target) +
                  torch.nn.functional.cross_entropy(logits.T, target))


# -- the encoder face ----------------------------------------------------------------------------
class JointEncoder:
    """Maps an acoustic encoder's embeddings (and texts) into the joint space.

    A derived encoder: `encode_from(base)` takes the acoustic encoder's Encoded output for the same
    segments, so ingest runs the CNN once for both indexes.
    """

    space = "joint"
    labels = None

    def __init__(self, towers, meta: dict, path: Path):
        self.towers, self.meta, self.path = towers, meta, path
        self.name = meta["name"]
        self.dim = int(meta["dim"])
        self.audio_model = meta["audio_model"]
        self.base_space = meta.get("audio_space", "cnn")
        self._phrases = None

    @property
    def feature_config(self):
        from nels.audio.features import FeatureConfig

        return FeatureConfig(**self.meta["feature_config"]) if "feature_config" in self.meta else FeatureConfig()

    def encode_from(self, base: Encoded) -> Encoded:
        return Encoded(self.audio(base.embeddings), None)

    def audio(self, acoustic_embeddings: np.ndarray) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(acoustic_embeddings, dtype=np.float32))
            return self.towers.embed_audio(x).numpy()

    def text(self, texts: Sequence[str]) -> np.ndarray:
        from nels.encoders.text import shared_text_encoder

        return self.text_from_sentence(shared_text_encoder().encode(list(texts)))

    def text_from_sentence(self, sentence_vecs: np.ndarray) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            return self.towers.embed_text(torch.from_numpy(np.ascontiguousarray(sentence_vecs, np.float32))).numpy()

    def phrase_bank(self) -> tuple[list[str], list[str], np.ndarray]:
        """(phrases, their class, joint vectors) of the vocabulary: for audio->text tag suggestions and
        text->text related words."""
        if self._phrases is None:
            from nels.encoders.text import load_vocabulary

            own = self.path / "vocabulary.json"  # the vocabulary it was trained with
            voc = load_vocabulary(own if own.exists() else None)
            phrases, owners = [], []
            for label in voc.classes:
                for p in voc.get(label).phrases():
                    phrases.append(p)
                    owners.append(label)
            self._phrases = (phrases, owners, self._bank_vectors(phrases))
        return self._phrases

    def _bank_vectors(self, phrases: list[str]) -> np.ndarray:
        """The joint vectors of the vocabulary's phrases, cached on disk (keyed by these weights and phrases):
        encoding them took ~2 s of every cold `nels search`."""
        import os

        from nels import config

        key = hashlib.sha256(json.dumps([self.meta.get("weights_sha256") or str(self.path), self.name, phrases])
                             .encode()).hexdigest()[:32]
        f = config.cache_dir() / "text" / f"joint-bank-{key}.npy"
        try:
            v = np.load(f)
            if v.shape == (len(phrases), self.dim):
                return v.astype(np.float32)
        except (OSError, ValueError):
            pass
        v = self.text(phrases)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, v)
            os.replace(tmp, f)
        except OSError:
            pass  # a read-only cache only costs the time
        return v


def save_joint(path: Path, towers, meta: dict, vocabulary: Path | None = None) -> None:
    torch = _torch()
    path.mkdir(parents=True, exist_ok=True)
    if vocabulary is not None:
        (path / "vocabulary.json").write_bytes(Path(vocabulary).read_bytes())
    tmp = path / (WEIGHTS + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in towers.state_dict().items()}, tmp)
    tmp.replace(path / WEIGHTS)
    meta = dict(meta, format=FORMAT, weights=WEIGHTS,
                weights_sha256=hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest())
    (path / "joint.json").write_text(json.dumps(meta, indent=2))


def load_joint(path: Path) -> JointEncoder:
    torch = _torch()
    path = Path(path)
    try:
        meta = json.loads((path / "joint.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("not a joint model")
        towers = build_towers(meta["audio_dim"], meta.get("text_dim", TEXT_DIM), meta["dim"], meta["hidden"],
                              text_tower=meta.get("text_tower", "mlp"))
        towers.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load the joint model ({exc})") from None
    towers.eval()
    return JointEncoder(towers, meta, path)


_loaded: dict[str, JointEncoder | None] = {}


def joint_dir_for(acoustic_encoder) -> Path | None:
    """A joint model lives in its acoustic model's folder (`<model>/joint/`): it is only valid for it."""
    base = getattr(acoustic_encoder, "path", None)
    return Path(base) / "joint" if base is not None else None


def joint_encoder_for(acoustic_encoder) -> JointEncoder | None:
    """The joint model trained on `acoustic_encoder`'s embeddings, or None when there is none. A model with classes
    added beside its own (`joint_base`: nels train --add) has the vectors of its base, and so its joint space."""
    acoustic_encoder = getattr(acoustic_encoder, "joint_base", acoustic_encoder)
    d = joint_dir_for(acoustic_encoder)
    key = f"{acoustic_encoder.name}:{d}"
    if key not in _loaded:
        found = None
        if d is not None and (d / "joint.json").exists():
            try:
                meta = json.loads((d / "joint.json").read_text())
            except ValueError:
                meta = {}
            sha = getattr(acoustic_encoder, "meta", {}).get("weights_sha256")
            if meta.get("audio_model") == acoustic_encoder.name and meta.get("audio_model_sha256") in (None, sha):
                found = load_joint(d)  # only for the exact weights it was trained on
        _loaded[key] = found
    return _loaded[key]
