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


def test_demo_json_says_the_synthetic_corpus_is_for_plumbing_and_prints_an_admin_token(tmp_path, monkeypatch,
                                                                                      capsys):
    """`nels demo --json` prints what it built and its example search; on the synthetic corpus it says how many
    classes the shipped model recognises and points to --download. Served, it makes and prints an admin token
    that the server accepts."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from devserver import free_port
    from nels.cli import main

    monkeypatch.setattr(demo, "find_esc50", lambda: None)
    monkeypatch.setattr(demo, "CACHE", tmp_path / "cache")
    assert main(["--library", str(tmp_path / "lib"), "demo", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["synthetic"] is True and d["clips"] == len(demo.SYNTH_CLASSES) * 8
    assert set(d["recognised"]) == set(demo.SYNTH_CLASSES) and all(0 <= v <= 5 for v in d["recognised"].values())
    assert "plumbing" in d["note"] and "nels demo --download" in d["note"]
    assert d["search"]["query"] == d["example"] and len(d["search"]["results"]) == 5
    assert {"results", "notice", "mode", "k", "page"} <= set(d["search"])

    # served: a generated admin token, printed, and accepted by the admin API
    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NELS_ADMIN_TOKEN"}
    env.update(PYTHONPATH=str(root), NELS_ESC50=str(tmp_path / "no-esc50"))
    code = ("import sys, nels.demo as d; d.find_esc50 = lambda: None; d.CACHE = __import__('pathlib').Path(sys.argv[1]);"
            " from nels.cli import main; sys.exit(main(sys.argv[2:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache"), "--library", str(tmp_path / "lib"),
                             "demo", "--port", str(port)], env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        token = None
        for line in proc.stderr:  # waits on the demo's own words, not on a clock
            if "token:" in line:
                token = line.rsplit("token:", 1)[1].strip()
                break
        assert token, "nels demo printed no admin token"
        seen = []
        for line in proc.stdout:  # the server says it is ready once it listens, models loaded
            seen.append(line)
            if "nels: serving" in line:
                break
        assert proc.poll() is None, ("nels demo stopped", seen, proc.stderr.read())
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/admin/jobs",
                                     headers={"Authorization": f"Bearer {token}"})
        # the port is open; the request waits in its backlog until a worker has loaded (a bound, not a clock)
        with urllib.request.urlopen(req, timeout=900) as r:
            assert r.status == 200 and "jobs" in json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
