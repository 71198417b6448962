"""Which search modes a library supports, and which one a query gets when it names none.

The rule is written once, here, for `nels.search.query.search` (what a query without `mode` runs) and
for the website (`/api/modes`, which tells the page what it will get):

  text + audio  fused (whatever applies is fused)
  text          what validation chose when the joint space was trained (the joint model's
                meta["fusion"]["text"]["default_mode"]; measured on ESC-50 in bench/RESULTS.md), else
                linguistic, or joint when the library has no class probabilities but a joint space
  audio         fused when the library has a joint space (it lifts audio->audio over the CNN embedding
                alone), else acoustic
"""
from __future__ import annotations

from nels.errors import QueryError
from nels.search.joint import library_has_joint, library_joint


def _validated_text_mode(lib) -> str | None:
    """The text default mode stored with the library's joint model (None: no joint model, or none chosen)."""
    enc = library_joint(lib)
    if enc is None:
        return None
    fusion = ((enc.meta or {}).get("fusion") or {}).get("text") or {}
    return fusion.get("default_mode") or None


def default_mode(lib, has_text: bool, has_audio: bool, has_joint: bool | None = None) -> str:
    """The mode a query with text (`has_text`) and/or audio (`has_audio`) gets when it names none.

    has_joint : whether the library has a joint space, when the caller already knows (else looked up).
    A library that can answer neither still gets a mode: the search then says what is missing.
    """
    if not has_text and not has_audio:
        raise QueryError("empty query: give some text, an audio file, or both")
    if has_text and has_audio:
        return "fused"
    if has_joint is None:
        has_joint = library_has_joint(lib)
    if has_audio:
        return "fused" if has_joint else "acoustic"
    if has_joint:
        chosen = _validated_text_mode(lib)
        if chosen:
            return chosen
        if not lib.catalogue.has_probs():
            return "joint"
    return "linguistic"


def library_modes(lib) -> dict:
    """{available: [modes], text: bool, audio: bool, default_text: mode|None, default_audio: mode|None}:
    what this library can answer, and the mode a text or an audio query gets by default (None: that
    kind of query cannot be answered here)."""
    cat = lib.catalogue
    has_probs = cat.has_probs()
    has_vecs = cat.has_vectors()
    has_joint = bool(library_has_joint(lib))
    available = [m for m, ok in (("linguistic", has_probs), ("acoustic", has_vecs), ("joint", has_joint)) if ok]
    if available:
        available.append("fused")
    text, audio = has_probs or has_joint, has_vecs or has_joint
    return {"available": available, "text": text, "audio": audio,
            "default_text": default_mode(lib, True, False, has_joint) if text else None,
            "default_audio": default_mode(lib, False, True, has_joint) if audio else None}
