"""The demo corpus without ESC-50: a synthetic corpus, said to be synthetic, indexed and searchable."""
import nels.demo as demo


def test_demo_falls_back_to_a_synthetic_corpus_and_says_so(tmp_path, monkeypatch, capsys):
    from nels.library import Library

    monkeypatch.setattr(demo, "find_esc50", lambda: None)
    monkeypatch.setattr(demo, "CACHE", tmp_path / "cache")
    what, example = demo.build(str(tmp_path / "lib"))
    assert "SYNTHETIC" in what and "SYNTHETIC" in capsys.readouterr().err
    lib = Library(tmp_path / "lib", create=False)
    assert lib.stats()["clips"] == len(demo.SYNTH_CLASSES) * 8
    assert lib.get_meta("demo_corpus") == what
    assert len(lib.search(audio=next((tmp_path / "cache" / "synthetic-demo" / "siren").iterdir()), k=3)) == 3
    # the example search it prints finds clips of its own class
    cls = example.replace(" ", "_")
    assert cls in demo.SYNTH_CLASSES
    assert f"-{cls}-" in lib.search(text=example, k=1)[0]["title"]
