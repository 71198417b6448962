"""Long recordings (issue 18, section 4): progress counted in seconds of audio (ingest, tag, reindex) with the
rate and an ETA; events merged into runs; and a re-index that would drop classes or a vector space asks first."""
from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import SR, write_wav


def tone(freq: float, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture
def tones():
    import importlib

    from nels.encoders import registry

    import plugins.tones as mod

    importlib.reload(mod)
    yield mod
    registry._REGISTRY.pop("tones", None)


def test_progress_text_has_audio_rate_and_eta():
    from nels.ingest.progress import clock, describe

    assert clock(3725) == "1:02:05" and clock(61.4) == "1:01"
    text = describe(600, 1800, 10.0)
    assert text == "10:00 of 30:00 audio · 60x real time · ETA 0:20", text  # 1200 s left at 60x
    assert describe(0, None, 0.0) == "0:00 audio"


def test_audio_bar_counts_partial_items_and_fixes_its_total():
    from nels.ingest.progress import AudioBar

    bar = AudioBar("t", enabled=False)
    bar.expect("a", 100.0)
    bar.expect("b", 50.0)
    bar.partial("a", 40.0)
    assert bar.position == 40.0 and bar.total == 150.0
    bar.finish("a", 100.0)
    bar.partial("a", 10.0)  # a late report of a finished item is ignored
    bar.finish("b", 0.0)  # failed: its audio leaves the total
    bar.finish("c", 30.0)  # never announced (a URL): joins the total
    assert bar.position == 130.0 and bar.total == 130.0
    bar.close()


def test_encoding_one_long_file_reports_progress_as_it_goes(tmp_path, tones):
    from nels.encoders.base import create_encoder
    from nels.ingest.mapper import encode_file

    f = write_wav(tmp_path / "long.wav", tone(1000, 150.0))
    seen: list[float] = []
    duration, starts, *_ = encode_file(f, [create_encoder("tones")], on_audio=seen.append)
    assert len(seen) >= 3, seen  # several reports within the one file, not one at its end
    assert seen == sorted(seen) and seen[0] < 75.0 and abs(seen[-1] - duration) <= 1.0, seen


def test_ingest_bar_counts_seconds_of_audio(tmp_path, tones, capsys, monkeypatch):
    from nels.ingest.runner import IngestOptions, ingest

    monkeypatch.setenv("NELS_PROGRESS_EVERY", "0")  # not a terminal: plain lines, here one per update
    from nels.library import Library

    write_wav(tmp_path / "in" / "long.wav", tone(300, 150.0))
    write_wav(tmp_path / "in" / "short.wav", tone(3000, 30.0))
    with Library(tmp_path / "lib") as lib:
        rep = ingest(lib, [str(tmp_path / "in")], model="tones", options=IngestOptions(progress=True))
    assert len(rep.added) == 2
    err = capsys.readouterr().err
    assert "3:00 of 3:00 audio" in err, err[-500:]
    assert re.search(r"\d+x real time", err), err[-500:]
    assert " item" not in err
    assert "\r" not in err and all(line.startswith("ingest: ") for line in err.splitlines()), err[-500:]


def test_progress_off_a_terminal_is_a_line_now_and_then(capsys, monkeypatch):
    """A log file gets 'desc: text' lines every NELS_PROGRESS_EVERY seconds (30 by default) and a last one
    at the end, not a bar redrawn with carriage returns; a job shorter than the interval writes nothing."""
    from nels.ingest.progress import AudioBar

    bar = AudioBar("ingest")  # pytest's captured stderr is not a terminal
    bar.expect("a", 60.0)
    bar.finish("a", 60.0)
    bar.close()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("NELS_PROGRESS_EVERY", "0")
    bar = AudioBar("reindex")
    bar.expect("a", 90.0)
    bar.partial("a", 30.0)
    bar.finish("a", 90.0)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("reindex: 0:30 of 1:30 audio") for line in lines), lines
    assert lines[-1].startswith("reindex: 1:30 of 1:30 audio"), lines
    assert AudioBar("x", enabled=False).lines is False


def test_tag_reports_progress_and_bridges_dropouts(tmp_path, tones):
    from nels.encoders.base import create_encoder
    from nels.search.tag import tag_file

    # 20 s high tone, 3 s of a low tone, 20 s high tone: one high event across the dropout
    x = np.concatenate([tone(3000, 20.0), tone(300, 3.0, seed=1), tone(3000, 20.0, seed=2)])
    f = write_wav(tmp_path / "x.wav", x)
    seen: list[float] = []
    events = tag_file(f, create_encoder("tones"), threshold=0.5, batch=16, on_audio=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen)
    high = [e for e in events if e["label"] == "high tone"]
    assert len(high) == 1 and high[0]["start"] == 0.0 and high[0]["end"] >= 42.0, events
    # max_gap=0 splits it again, and min_duration drops the short low-tone event
    split = tag_file(f, create_encoder("tones"), threshold=0.5, max_gap=0.0, min_duration=3.5)
    assert len([e for e in split if e["label"] == "high tone"]) == 2, split
    assert not [e for e in split if e["label"] == "low tone"], split


def test_merge_events_gap_and_min_duration():
    from nels.search.tag import merge_events

    starts = np.arange(10.0)
    ends = starts + 2.0
    p = np.zeros((10, 2), np.float32)
    p[[0, 1, 2, 5, 6, 7, 8, 9], 0] = 0.9  # dog, two segments missing (3, 4): a 1 s gap after seg 2's end
    p[4, 1] = 0.8  # one cat segment
    ev = merge_events(starts, ends, p, ["dog", "cat"], 0.5)
    assert [(e["label"], e["start"], e["end"]) for e in ev] == [("dog", 0.0, 11.0), ("cat", 4.0, 6.0)], ev
    ev = merge_events(starts, ends, p, ["dog", "cat"], 0.5, max_gap=0.5, min_duration=2.5)
    assert [(e["label"], e["start"], e["end"]) for e in ev] == [("dog", 0.0, 4.0), ("dog", 5.0, 11.0)], ev


def _segs(labels, hop=1.0, window=2.0):
    return [{"segment_id": i + 1, "start": i * hop, "end": i * hop + window,
             "labels": [{"label": lb, "prob": 0.9}] if lb else []} for i, lb in enumerate(labels)]


def test_label_runs_absorb_flicker_and_keep_isolated_events():
    from nels.search.tag import group_by_label, label_runs

    # one flickering dog segment inside rain, then 5 s of dog, then one rain segment at the end
    segs = _segs(["rain"] * 30 + ["dog"] + ["rain"] * 30 + ["dog"] * 5 + ["rain"])
    runs = label_runs(segs)
    assert [(r["label"], r["start"], r["end"]) for r in runs] == [("rain", 0.0, 62.0), ("dog", 61.0, 68.0)], runs
    assert sorted(i for r in runs for i in r["segments"]) == [s["segment_id"] for s in segs]  # each in one run
    assert len(label_runs(segs, min_duration=0)) == 5  # without a minimum: every change is an event
    # an isolated short event (silence around it) is kept
    iso = _segs(["rain"] * 5) + [{"segment_id": 99, "start": 20.0, "end": 22.0, "labels": [{"label": "dog", "prob": .7}]}]
    assert [r["label"] for r in label_runs(iso)] == ["rain", "dog"]
    groups = group_by_label(runs + runs)
    assert [(g["label"], g["count"]) for g in groups] == [("dog", 2), ("rain", 2)] or \
        [(g["label"], g["count"]) for g in groups] == [("rain", 2), ("dog", 2)]


def test_reindex_without_model_says_what_it_does_and_a_loss_needs_confirmation(tmp_path, tones, capsys):
    from nels.cli import main
    from nels.ingest.reindex import plan_reindex
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    write_wav(tmp_path / "in" / "a.wav", tone(300, 4.0))
    write_wav(tmp_path / "in" / "b.wav", tone(3000, 4.0))
    lib_dir = str(tmp_path / "lib")
    with Library(lib_dir) as lib:
        ingest(lib, [str(tmp_path / "in")], model="default+tones", options=IngestOptions(progress=False))
        plan = plan_reindex(lib, "tones")
        assert set(plan.drop_spaces) >= {"cnn"} and "dog" in plan.drop_labels and len(plan.clips) == 2
        assert not plan_reindex(lib, None).clips
    capsys.readouterr()
    assert main(["--library", lib_dir, "reindex"]) == 0
    out = capsys.readouterr()
    assert "nothing to re-index" in out.out and "--model" in out.out and "re-indexed 0" not in out.out
    # non-interactive (pytest's stdin is no terminal): refused, the library unchanged
    assert main(["--library", lib_dir, "reindex", "--model", "tones"]) == 2
    err = capsys.readouterr().err
    assert "--yes" in err and "drops 50 of the library's classes" in err and "cnn" in err, err
    with Library(lib_dir) as lib:
        assert "cnn" in lib.spaces() and lib.get_meta("model") == "default+tones"
    assert main(["--library", lib_dir, "reindex", "--model", "tones", "--yes"]) == 0
    with Library(lib_dir) as lib:
        assert lib.spaces() == ["tones"] and lib.get_meta("model") == "tones"


def test_reindex_bar_counts_seconds_of_audio(tmp_path, tones, capsys, monkeypatch):
    monkeypatch.setenv("NELS_PROGRESS_EVERY", "0")
    from nels.ingest.reindex import reindex
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    write_wav(tmp_path / "in" / "long.wav", tone(300, 90.0))
    with Library(tmp_path / "lib") as lib:
        ingest(lib, [str(tmp_path / "in")], model="baseline", options=IngestOptions(progress=False))
        capsys.readouterr()
        out = reindex(lib, "tones", progress=True)
    assert out["clips"] == 1 and out["audio_seconds"] == 90.0
    err = capsys.readouterr().err
    assert "reindex" in err and "1:30 of 1:30 audio" in err, err[-400:]


def test_tag_prints_a_summary_by_label_for_a_long_recording(tmp_path, tones, capsys):
    from nels.cli import main

    x = np.concatenate([tone(3000 if i % 2 else 300, 6.0, seed=i) for i in range(12)])
    f = write_wav(tmp_path / "long.wav", x)
    assert main(["tag", str(f), "--model", "tones", "--threshold", "0.5", "--max-gap", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 12 and out[-1].startswith("12 events: "), out[-3:]
    assert "high tone 6x" in out[-1] and "low tone 6x" in out[-1]
