"""The demo corpus without ESC-50: a synthetic corpus, said to be synthetic, indexed and searchable."""
import argparse
import hashlib
import re

import nels.demo as demo


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_falls_back_to_a_synthetic_corpus_and_says_so(tmp_path, monkeypatch, capsys):
    from nels.library import Library

    monkeypatch.setattr(demo, "find_esc50", lambda: None)
    monkeypatch.setattr(demo, "CACHE", tmp_path / "cache")
    args = argparse.Namespace(library=str(tmp_path / "lib"), download=False, no_serve=True, host="127.0.0.1",
                              port=0)
    assert demo.cli_demo(args) == 0
    out = capsys.readouterr()
    assert "SYNTHETIC" in out.err
    lib = Library(tmp_path / "lib", create=False)
    assert lib.stats()["clips"] == len(demo.SYNTH_CLASSES) * 8
    assert "SYNTHETIC" in lib.get_meta("demo_corpus")

    # Ground truth that does not come from search: the class each file was generated as (its folder in the
    # corpus), keyed by content, and matched against the media copy the library itself serves for a clip.
    corpus = tmp_path / "cache" / "synthetic-demo"
    generated_as = {_sha256(p): p.parent.name for p in corpus.rglob("*.wav")}
    assert len(generated_as) == len(demo.SYNTH_CLASSES) * 8

    def true_class(clip_id: int) -> str:
        return generated_as[_sha256(lib.path / lib.clip(clip_id)["media_path"])]

    # query by example: a siren clip of the library finds a siren clip first (itself)
    siren = sorted((corpus / "siren").iterdir())[0]
    hits = lib.search(audio=siren, k=3)
    assert len(hits) == 3 and true_class(hits[0]["clip_id"]) == "siren"

    # the example search the demo prints: its results really are clips generated as the class it names,
    # and the printed titles are theirs (not just that the demo picked a class it could find)
    example = re.search(r'^example search: "(.+)"$', out.out, re.M).group(1)
    cls = example.replace(" ", "_")
    assert cls in demo.SYNTH_CLASSES
    printed = re.findall(r"^\s+\d+\. (\S+)\s+\d+-\d+ s\s+\[", out.out, re.M)
    res = lib.search(text=example, k=5)
    assert printed == [r["title"] for r in res] and len(printed) == 5, out.out
    truths = [true_class(r["clip_id"]) for r in res]
    assert truths.count(cls) >= 4, (example, truths)
    assert all(t.startswith(f"synthetic-{c}-") for t, c in zip(printed, truths)), (printed, truths)
    lib.close()
