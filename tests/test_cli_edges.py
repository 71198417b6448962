"""The small edges of the command line (issue 18, section 6): what a person sees when an input is not what
the command expects."""
from __future__ import annotations

import argparse
import json

import pytest

from conftest import synth, write_wav
from nels.cli import _options_everywhere, build_parser, main


def nels(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def library(tmp_path, sounds, capsys):
    lib = tmp_path / "lib"
    rc, out, err = nels(capsys, "--library", str(lib), "ingest", str(sounds), "--model", "baseline")
    assert rc == 0, err
    return lib


def test_a_text_file_that_is_not_a_url_list_is_not_audio(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("Things to record\nthe rain on the roof\nbirds at dawn\n")
    rc, out, err = nels(capsys, "--library", str(tmp_path / "lib"), "ingest", str(notes), "--model", "baseline")
    assert rc == 1
    assert "no such file" not in err and "not a readable audio file" in err
    failed = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and failed[0].count(str(notes)) == 1, failed  # the path is said once
    rc, out, err = nels(capsys, "--library", str(tmp_path / "lib"), "stats", "--json")
    st = json.loads(out)
    assert [f["attempts"] for f in st["failures"]] == [1]  # tried once, not "attempts 3"
    rc, out, err = nels(capsys, "--library", str(tmp_path / "lib"), "stats")
    assert "(attempts 1)" in out and out.count(str(notes)) == 1


def test_reingest_says_already_in_the_library(library, sounds, capsys):
    rc, out, err = nels(capsys, "--library", str(library), "ingest", str(sounds))
    assert rc == 0 and "already in the library" in out, out
    (sounds / "again").mkdir()
    (sounds / "again" / "copy.wav").write_bytes((sounds / "hum.wav").read_bytes())
    rc, out, err = nels(capsys, "--library", str(library), "ingest", str(sounds / "again"))
    assert rc == 0 and "1 already in the library (the same audio)" in out, out


def test_an_empty_folder_says_no_audio_found(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no sound here")
    rc, out, err = nels(capsys, "--library", str(tmp_path / "lib"), "ingest", str(tmp_path / "empty"))
    assert rc == 2 and "no audio found" in err


def test_remove_names_the_missing_ids(library, capsys):
    rc, out, err = nels(capsys, "--library", str(library), "remove", "1", "99999", "--json")
    assert rc == 1 and json.loads(out) == {"removed": 1, "missing": [99999]}
    rc, out, err = nels(capsys, "--library", str(library), "remove", "1", "99998")
    assert rc == 1 and "clip 1" in err and "clip 99998" in err


def test_an_unknown_label_is_named(tmp_path, sounds, capsys):
    from nels.library import Library

    lib = Library(tmp_path / "lib")
    lib.catalogue.register_model("toy", "cnn", None, ["dog", "rain", "siren"])
    lib.close()
    write_wav(tmp_path / "q.wav", synth("tone"))
    rc, out, err = nels(capsys, "--library", str(tmp_path / "lib"), "search", "dog", "--label", "dgo")
    assert rc == 2 and "unknown label 'dgo'" in err and "did you mean dog" in err


def test_label_on_a_library_without_classes(library, capsys):
    rc, out, err = nels(capsys, "--library", str(library), "search", "dog", "--label", "dog")
    assert rc == 2 and "has no classes" in err


def test_library_after_the_subcommand(library, capsys):
    rc, out, err = nels(capsys, "stats", "--json", "--library", str(library))
    assert rc == 0 and json.loads(out)["clips"] == 6


def test_every_option_has_help():
    parser = build_parser()
    _options_everywhere(parser)
    bare = []

    def walk(p, name):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    walk(sp, f"{name} {n}")
            elif not a.help:
                bare.append(f"{name} {'/'.join(a.option_strings) or a.dest}")

    walk(parser, "nels")
    assert not bare, f"options without help: {bare}"


def test_a_fusion_of_fused_rankings_keeps_every_reason():
    """Text search over two classifiers fuses their rankings, then fuses that with the joint space: the
    explanation shown must hold each reason, not an empty first one ("Why: ; close to ...")."""
    from nels.search.query import rrf
    from nels.search.results import Candidate

    inner = rrf({"a": [Candidate(1, 0.9, "matches 'glass' [cnn]")], "b": [Candidate(1, 0.8, lambda: "matches 'Glass' [yamnet]")]})
    outer = rrf({"linguistic": inner, "joint_text": [Candidate(1, 0.99, "close to the words in the joint space")]})
    text = outer[0].explain()
    assert not text.startswith(";") and "; ;" not in text
    assert text == "matches 'glass' [cnn]; matches 'Glass' [yamnet]; close to the words in the joint space"


def test_the_labels_column_never_cuts_a_probability():
    """The search table's labels column keeps whole "label prob" entries: cutting at the column's edge showed
    "water_drops 0.73, chirping_birds 0" for chirping_birds 0.31."""
    from nels.cli.search import label_cell

    two = [{"label": "water_drops", "prob": 0.73}, {"label": "chirping_birds", "prob": 0.31}]
    assert label_cell(two) == "water_drops 0.73"
    assert label_cell(two, width=40) == "water_drops 0.73, chirping_birds 0.31"
    long = label_cell([{"label": "x" * 60, "prob": 0.5}])
    assert len(long) == 34 and long.endswith("… 0.50")
