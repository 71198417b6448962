"""The AudioSet vocabulary: the 632 classes of the AudioSet ontology (name, description, hierarchy) as a NELS
`Vocabulary`, keyed by the label strings YAMNet uses (its class map's `display_name`; identical to the ontology's
names) and resolvable by AudioSet id (`vocabulary.resolve("/m/0bt9lr") == "Dog"`).

    load_audioset_vocabulary()     # the shipped nels/data/audioset/vocabulary.json (no ../shared needed)
    build_vocabulary(ontology)     # regenerate it from ontology.json (+ YAMNet's class map for the keys)

Why a generated file inside the package rather than reading ontology.json at run time: a user who installs the
YAMNet weights (`nels models fetch yamnet`) gets text search over its 521 classes with nothing else to fetch,
and the text NELS embeds is reviewable and fixed (a phrase change changes search). The ontology is Google's,
under CC BY-SA 4.0, so the generated file is too: nels/data/audioset/LICENSE.md credits it, says what was
changed (a selection of fields, names split into synonyms) and keeps the share-alike terms; the only other
file derived from it is examples.json (its positive-example videos, nels.learn.planner).
`tests/test_vocabulary_audioset.py` checks the shipped file against a fresh build from
`../shared/datasets/audioset-ontology` (skipped without it).

Each entry: "name" (the display name), "synonyms" (the comma-separated parts of the name, and each part
without its parenthetical: "Fire engine, fire truck (siren)" -> "Fire engine", "fire truck (siren)",
"fire truck"), "description" (the ontology's), "mid" and "parents" (the labels of its parents in the ontology;
several for classes listed in several places, e.g. "Hiss" under Cat, Snake, Steam and Onomatopoeia).

ESC-50 and AudioSet together (`union_vocabulary`): nels/data/audioset/esc50_links.json places each ESC-50 class
under the AudioSet classes it is a kind of ("dog" under "Dog" and "Bark"), written by hand from the class
definitions (not from any evaluation), so that hierarchy-aware search (`nels.encoders.concepts`) finds ESC-50
classes from AudioSet words ("animal", "domestic animals") and AudioSet classes from ESC-50 words.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import re
from pathlib import Path
from typing import Iterable

from nels.encoders.text import ClassText, Vocabulary, VocabularyError, load_vocabulary

DATA = Path(__file__).resolve().parent.parent / "data"
AUDIOSET_VOCABULARY = DATA / "audioset" / "vocabulary.json"
ESC50_LINKS = DATA / "audioset" / "esc50_links.json"
YAMNET_CLASS_MAP = DATA / "yamnet_class_map.csv"

SOURCE = ("AudioSet ontology v1 (Google), github.com/audioset/ontology at commit "
          "d417d32bf59c711abb5910fd2f76a0eb44697991, ontology.json SHA-256 "
          "9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d")
LICENCE = ("CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/): derived from the AudioSet ontology by "
           "Google Inc.; changes: fields selected (name, description, hierarchy, id), names split into synonyms, "
           "keys taken from YAMNet's class map. Share alike: see nels/data/audioset/LICENSE.md")


def _split_outside_parentheses(name: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in name:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def name_synonyms(name: str) -> list[str]:
    """The ways an AudioSet name can be typed: its comma-separated parts and each part without its
    parenthetical ("Roaring cats (lions, tigers)" -> "Roaring cats"); the name itself is not repeated."""
    out: list[str] = []
    parts = _split_outside_parentheses(name)
    for p in parts:
        for q in (p, re.sub(r"\s*\([^)]*\)", "", p).strip()):
            if q and q != name and q.lower() not in {o.lower() for o in out}:
                out.append(q)
    return out


def read_class_map(path: str | os.PathLike = YAMNET_CLASS_MAP) -> dict[str, str]:
    """mid -> display_name from a YAMNet class map (index,mid,display_name)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {r["mid"]: r["display_name"] for r in csv.DictReader(f)}


def build_vocabulary(ontology: str | os.PathLike | list, class_map: str | os.PathLike | None = YAMNET_CLASS_MAP) -> dict:
    """The AudioSet vocabulary as a JSON object (the format of `load_vocabulary`), from the ontology.

    ontology : ontology.json (path) or its parsed list of classes.
    class_map : a YAMNet class map; its display_name is the key of the classes it lists (the label string the
        YAMNet encoder uses), the ontology name the key of the others. None: ontology names throughout.
    """
    nodes = ontology if isinstance(ontology, list) else json.loads(Path(ontology).read_text(encoding="utf-8"))
    by_mid = {n["id"]: n for n in nodes}
    display = read_class_map(class_map) if class_map is not None else {}
    unknown = sorted(set(display) - set(by_mid))
    if unknown:
        raise VocabularyError(f"class map ids not in the ontology: {', '.join(unknown[:5])}")
    key = {mid: display.get(mid, n["name"]) for mid, n in by_mid.items()}
    if len(set(key.values())) != len(key):
        raise VocabularyError("two AudioSet classes share a name; keys must be unique")
    parents: dict[str, list[str]] = {}
    for n in nodes:
        for c in n.get("child_ids", []):
            if c in by_mid and n["id"] not in parents.setdefault(c, []):
                parents[c].append(n["id"])
    classes = {}
    for n in nodes:
        mid = n["id"]
        entry = {"name": key[mid], "description": " ".join(n.get("description", "").split()),
                 "synonyms": name_synonyms(key[mid]), "mid": mid,
                 "parents": [key[p] for p in parents.get(mid, [])]}
        if not entry["synonyms"]:
            del entry["synonyms"]
        if not entry["parents"]:
            del entry["parents"]
        classes[key[mid]] = entry
    return {"source": SOURCE, "licence": LICENCE,
            "generated_by": "nels.encoders.audioset.build_vocabulary(ontology.json, nels/data/yamnet_class_map.csv)",
            "classes": classes}


def write_vocabulary(ontology: str | os.PathLike, out: str | os.PathLike = AUDIOSET_VOCABULARY,
                     class_map: str | os.PathLike | None = YAMNET_CLASS_MAP) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(build_vocabulary(ontology, class_map), indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    return out


@functools.lru_cache(maxsize=4)
def load_audioset_vocabulary(path: str | None = None) -> Vocabulary:
    """The AudioSet vocabulary (the shipped file unless `path`); loaded once per process."""
    return load_vocabulary(path or AUDIOSET_VOCABULARY)


def load_links(path: str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """ESC-50 label -> the AudioSet classes (labels or mids) it is a kind of."""
    p = Path(path) if path is not None else ESC50_LINKS
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))["links"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VocabularyError(f"{p}: not a links file ({e})") from None
    return {k: tuple(v) for k, v in raw.items()}


def union_vocabulary(vocabularies: Iterable[Vocabulary], links: dict[str, Iterable[str]] | None = None) -> Vocabulary:
    """One vocabulary from several: an entry comes from the first vocabulary that has its label; parents and
    mids are merged. `links` adds parents (label or mid of an entry; unknown ones are ignored, so a links
    file may name classes that a smaller vocabulary lacks)."""
    classes: dict[str, ClassText] = {}
    parents: dict[str, list[str]] = {}
    mids: dict[str, str] = {}
    vocabularies = list(vocabularies)
    for v in vocabularies:
        for label, ct in v.classes.items():
            classes.setdefault(label, ct)
        for label, ps in v.parents.items():
            acc = parents.setdefault(label, [])
            acc.extend(p for p in ps if p not in acc)
        for label, mid in v.mids.items():
            mids.setdefault(label, mid)
    merged = Vocabulary(classes=classes, path=vocabularies[0].path if vocabularies else None, mids=mids)
    for label, targets in (links or {}).items():
        if label not in classes:
            continue
        acc = parents.setdefault(label, [])
        for t in targets:
            r = merged.resolve(t)
            if r is not None and r != label and r not in acc:
                acc.append(r)
    merged.parents = {k: tuple(v) for k, v in parents.items() if v}
    return merged
