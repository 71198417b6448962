"""Which of a segment's labels a person is shown: the most specific ones.

A library indexed by the own CNN and YAMNet stores each segment's top labels from both, and YAMNet puts the
AudioSet parents of a sound above the sound itself ("Animal 0.97, Domestic animals, pets 0.96, dog 0.96,
Dog 0.93" for a bark), so the first label of a result, and the label of a timeline event, named the broadest
class. `specific_labels` drops a label when a narrower one of the same sound is listed with enough probability
(AudioSet's hierarchy and the ESC-50 -> AudioSet links of the search vocabulary: ESC-50's "dog" lies under
AudioSet's "Dog", which lies under "Domestic animals, pets" and "Animal"). Nothing is fitted; the stored
labels, filters and facet counts are unchanged (only what is shown).
"""
from __future__ import annotations

import functools

#: a broader label is hidden when a narrower one has at least this share of its probability
NARROWER_SHARE = 0.5


@functools.lru_cache(maxsize=1)
def _broader():
    """label -> the labels that dominate it (every chain of parents passes through them), itself excluded."""
    from nels.encoders.concepts import dominators, search_vocabulary

    dom = dominators(search_vocabulary().parents)
    return lambda label: dom(label) - {label}


def specific_labels(labels: list[dict], share: float = NARROWER_SHARE) -> list[dict]:
    """`labels` ([{label, prob}], most probable first) without the labels that a listed narrower label
    stands for: label A is dropped when some listed B lies under A (A dominates B in the hierarchy) with
    prob(B) >= share x prob(A). Order is kept; unrelated labels (and labels the vocabulary does not know)
    all stay.

    labels : a segment's labels as the catalogue gives them ({"label": str, "prob": float}, ...).
    share : how probable, relative to the broader label, the narrower one must be to replace it (0.5: a
        bark at 0.93 replaces "Animal" at 0.97; "Dog" at 0.2 does not replace "Animal" at 0.9).
    """
    if len(labels) < 2:
        return list(labels)
    broader = _broader()
    hidden = set()
    for b in labels:
        over = broader(b["label"])
        if not over:
            continue
        for a in labels:
            if a["label"] in over and b["prob"] >= share * a["prob"]:
                hidden.add(a["label"])
    return [x for x in labels if x["label"] not in hidden]
