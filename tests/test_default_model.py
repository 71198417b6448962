"""Which encoders a new library gets without --model: the best measured configuration (own CNN + YAMNet) where
the YAMNet weights are installed, else the CNN alone with a note saying how to get the backbone; $NELS_MODEL
overrides; an existing library keeps what it was indexed with."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import synth, write_wav
from nels import config
from nels.encoders.selection import NO_BACKBONE_NOTE, default_spec
from nels.ingest.runner import IngestOptions, ingest
from nels.library import Library

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "yamnet" / "yamnet_classification.tflite"


@pytest.fixture
def no_override(monkeypatch, tmp_path):
    monkeypatch.delenv("NELS_MODEL", raising=False)
    monkeypatch.setenv("NELS_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(config, "shared_candidates", lambda relative: [])  # no development copy either
    return tmp_path / "models"


def test_without_the_backbone_the_cnn_alone_and_a_note(no_override, tmp_path, capsys):
    assert default_spec() == ("default", NO_BACKBONE_NOTE)
    write_wav(tmp_path / "in" / "a.wav", synth("tone", seconds=3.0))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(tmp_path / "in")], model=None, options=IngestOptions(progress=False))
    assert len(rep.added) == 1 and lib.get_meta("model") == "default"  # said even without a progress bar
    assert "nels models fetch yamnet" in capsys.readouterr().err
    lib.close()


def test_nels_model_overrides(no_override, monkeypatch):
    monkeypatch.setenv("NELS_MODEL", "baseline")
    assert default_spec() == ("baseline", None)


def test_an_indexed_library_keeps_its_model(no_override, tmp_path, monkeypatch):
    monkeypatch.setenv("NELS_MODEL", "baseline")
    write_wav(tmp_path / "in" / "a.wav", synth("tone", seconds=3.0))
    write_wav(tmp_path / "in2" / "b.wav", synth("noise", seconds=3.0))
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(tmp_path / "in")], model=None, options=IngestOptions(progress=False))
    monkeypatch.setenv("NELS_MODEL", "default")  # the default changed since: the library's own model stays
    rep = ingest(lib, [str(tmp_path / "in2")], model=None, options=IngestOptions(progress=False))
    assert len(rep.added) == 1 and lib.get_meta("model") == "baseline"
    lib.close()


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs the YAMNet weights in ../shared/models/yamnet")
def test_with_the_backbone_installed_cnn_and_yamnet(no_override, tmp_path, capsys):
    dest = no_override / "yamnet" / WEIGHTS.name
    dest.parent.mkdir(parents=True)
    dest.symlink_to(WEIGHTS)
    assert default_spec() == ("default+yamnet", None)
    write_wav(tmp_path / "in" / "a.wav", synth("tone", seconds=3.0))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(tmp_path / "in")], model=None, options=IngestOptions(progress=True))
    assert len(rep.added) == 1 and lib.get_meta("model") == "default+yamnet"
    assert len(lib.catalogue.prob_models()) == 2
    assert "not installed" not in capsys.readouterr().err
    lib.close()
