"""Search in the cross-modal joint space: k-NN of a text or a sound, audio->text tag suggestions and
text->text related words (the model itself, `JointEncoder`, is in `nels.encoders.joint`)."""
from __future__ import annotations

import numpy as np

from nels.encoders.base import l2_normalize
from nels.encoders.joint import JointEncoder, joint_encoder_for
from nels.encoders.selection import library_encoder
from nels.search.results import Candidate, nearest_segments


def library_has_joint(lib) -> bool:
    return lib.catalogue.has_space("joint")


def library_joint(lib) -> JointEncoder | None:
    return lib.memo("joint", lambda: joint_encoder_for(library_encoder(lib)))


def search_candidates(lib, text: str | None = None, audio: np.ndarray | None = None, n: int = 100,
                      mapped: np.ndarray | None = None):
    """Joint-space k-NN: `text` (a string) or `audio` (acoustic embeddings of the query's windows). mapped : the
    query's joint-space vectors when the caller has them (`enc.text([text])` or `enc.audio(audio)`)."""
    enc = library_joint(lib)
    if enc is None:
        return None
    if text is not None:
        q = enc.text([text]) if mapped is None else mapped
        what = "the words"
    else:
        q = enc.audio(audio) if mapped is None else mapped
        what = "the sound"
    ranked = nearest_segments(lib.store("joint"), q, n)
    return [Candidate(i, s, f"close to {what} in the joint space (cosine {s:.2f})", {"joint": s}) for i, s in ranked]


def suggest_tags(enc: JointEncoder, acoustic_embeddings: np.ndarray, k: int = 5,
                 classes: set[str] | None = None, mapped: np.ndarray | None = None) -> list[dict]:
    """Audio -> text: the vocabulary phrases nearest to a sound in the joint space.

    classes : only phrases of these classes (None: any). The joint space knows only its model's classes and
        puts every sound near one of them (speech lands on "coughing"), so search passes the classes its
        model recognises in the query. mapped : `enc.audio(acoustic_embeddings)` when the caller has it."""
    joint = enc.audio(acoustic_embeddings) if mapped is None else mapped
    return _nearest_phrases(enc, l2_normalize(joint.mean(axis=0)), k, classes)


def related_words(enc: JointEncoder, text: str, k: int = 8, classes: set[str] | None = None,
                  mapped: np.ndarray | None = None) -> list[dict]:
    """Text -> text: sound words near a query in the joint space (near in sound, not only in spelling).

    classes : only phrases of these classes (None: any); search passes the classes the query's words name
        ("guitar" was near "tin can" in an ESC-50 joint space, which has no guitar). mapped : `enc.text([text])`
        when the caller has it."""
    return _nearest_phrases(enc, (enc.text([text]) if mapped is None else mapped)[0], k, classes, exclude=text)


def _nearest_phrases(enc: JointEncoder, q: np.ndarray, k: int, classes: set[str] | None,
                     exclude: str | None = None) -> list[dict]:
    if classes is not None and not classes:
        return []
    phrases, owners, vecs = enc.phrase_bank()
    sims = vecs @ q
    order = [i for i in np.argsort(-sims) if (classes is None or owners[i] in classes)
             and (exclude is None or phrases[i].lower() != exclude.lower())][:k]
    return [{"phrase": phrases[i], "label": owners[i], "score": round(float(sims[i]), 4)} for i in order]
