"""Encoders by name: a spec string ("baseline", "cnn:PATH", a model folder, "default") -> an Encoder.

Built-in kinds are listed here as import strings and loaded on first use; a plug-in registers itself
with `register_encoder(kind, factory)` (one line in its own file), or through the `nels.encoders` entry
point group of an installed package (`kind = "package.module:factory"`), so that worker processes of
the pool runner find it too.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

from nels.errors import ModelError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models" / "esc50-cnn"

BUILTIN = {
    "baseline": "nels.encoders.baseline:create",
    "cnn": "nels.encoders.cnn:load_folder",
    "yamnet": "nels.encoders.yamnet:create",
    "head": "nels.encoders.head:load_folder",
}

_REGISTRY: dict[str, Callable[[str | None], Any]] = {}


def register_encoder(kind: str, factory: Callable[[str | None], Any]) -> None:
    """Make `create_encoder("KIND")` / `create_encoder("KIND:ARG")` return `factory(None)` / `factory("ARG")`."""
    if not kind or ":" in kind:
        raise ValueError(f"bad encoder kind {kind!r}")
    _REGISTRY[kind] = factory


def _resolve(ref: str) -> Callable:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _factory(kind: str) -> Callable | None:
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    if kind in BUILTIN:
        return _resolve(BUILTIN[kind])
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="nels.encoders"):
            if ep.name == kind:
                return ep.load()
    except Exception:  # noqa: BLE001 - a broken plug-in package must not break the built-in encoders
        return None
    return None


def encoder_kinds() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(set(BUILTIN) | set(_REGISTRY) | {ep.name for ep in entry_points(group="nels.encoders")})


FOLDER_FORMATS = {"nels-head": "head", "nels-addon": "head"}  # model.json "format" -> kind; anything else is a CNN
# folder ("nels-cnn"); "nels-addon": classes added beside a model's own (nels train --add)


def _folder_kind(path: Path) -> str:
    """The kind of a model folder, from its model.json's "format" (a head on a backbone: "nels-head")."""
    import json

    try:
        fmt = json.loads((path / "model.json").read_text(encoding="utf-8")).get("format")
    except (ValueError, OSError, AttributeError):
        fmt = None  # the CNN loader reports a broken model.json
    return FOLDER_FORMATS.get(fmt, "cnn")


def create_encoder(spec: str | os.PathLike | None = None):
    """An encoder from its spec.

    spec : "KIND" or "KIND:ARG" for a known kind ("baseline", "cnn:PATH", "head:PATH", ...); a path to a model
        folder (model.json: the CNN, or a head on a backbone when its format is "nels-head"); "default" or None:
        the shipped CNN when present, else the baseline.
    """
    if spec in (None, "default"):
        if (DEFAULT_MODEL_DIR / "model.json").exists():
            return _factory("cnn")(str(DEFAULT_MODEL_DIR))
        return _factory("baseline")(None)
    s = str(spec)
    kind, sep, arg = s.partition(":")
    factory = _factory(kind) if (sep or kind == s) else None
    if factory is not None:
        return factory(arg or None)
    if (Path(s) / "model.json").exists():
        return _factory(_folder_kind(Path(s)))(s)
    raise ModelError(f"{s}: not a NELS model folder (no model.json) nor a known encoder"
                     f" ({', '.join(k + '[:ARG]' for k in encoder_kinds())}); use 'baseline' or a folder made by"
                     f" 'nels train'")


load_encoder = create_encoder  # the name used before the registry


# -- text encoders ------------------------------------------------------------------------------------------
TEXT_BUILTIN = {"minilm": "nels.encoders.text:TextEncoder"}
DEFAULT_TEXT_ENCODER = "minilm"
_TEXT_REGISTRY: dict[str, Callable[[], Any]] = {}


def register_text_encoder(kind: str, factory: Callable[[], Any]) -> None:
    """Make `create_text_encoder(kind)` return `factory()` (an object with name, dim, encode(texts))."""
    _TEXT_REGISTRY[kind] = factory


def create_text_encoder(spec: str | None = None):
    """A text encoder by name (None: the default, all-MiniLM-L6-v2)."""
    kind = spec or DEFAULT_TEXT_ENCODER
    if kind in _TEXT_REGISTRY:
        return _TEXT_REGISTRY[kind]()
    if kind in TEXT_BUILTIN:
        return _resolve(TEXT_BUILTIN[kind])()
    raise ModelError(f"unknown text encoder {kind!r} (known: {', '.join(sorted(set(TEXT_BUILTIN) | set(_TEXT_REGISTRY)))})")
