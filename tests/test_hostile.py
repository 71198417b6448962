"""Issue 17, hostile files and hostile conditions for ingest: a generated hostile corpus through `nels ingest`,
two ingests of the same inputs at once, temp folders of killed runs, a full disk, and property-based fuzzing
(hypothesis) of decode + segment + encode on malformed containers. Real files, real decoding, real servers
on loopback, a real full file system (a small tmpfs in a user namespace, else a file size limit)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hostile import Site, audio, flac_bytes, float_wav, hostile_corpus, library_is_consistent, noise, pcm16_wav
from nels.ingest.runner import IngestOptions, ingest
from nels.library import Library
from nels.sources.source import Item

ROOT = Path(__file__).resolve().parents[1]


def nels(*args, timeout=600, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "nels.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)


# -- the hostile corpus ---------------------------------------------------------------------------------------
def test_a_hostile_corpus_is_ingested_in_one_run_and_a_rerun_changes_nothing(tmp_path):
    src = tmp_path / "hostile"
    expect = hostile_corpus(src)
    lib_dir = tmp_path / "lib"
    p = nels("--library", str(lib_dir), "ingest", str(src), "--model", "baseline", "--json")
    assert p.returncode == 1, p.stderr  # some items failed, the batch finished
    assert "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    failed = {Path(f["uri"]).name: f["error"] for f in out["failed"]}
    bad = {n for n, reason in expect.items() if reason is not None}
    assert set(failed) == bad, (failed, bad)
    for name in bad:
        assert expect[name] in failed[name], (name, failed[name])
    assert out["added"] == len(expect) - len(bad)
    counts = library_is_consistent(lib_dir)
    with sqlite3.connect(lib_dir / "nels.db") as conn:
        durations = {Path(r[0]).name: r[1] for r in conn.execute("SELECT source_uri, duration FROM clips")}
        assert conn.execute("SELECT COUNT(*) FROM items WHERE status NOT IN ('done', 'failed')").fetchone()[0] == 0
        stored = [r[0] for r in conn.execute("SELECT media_path FROM clips")]
    assert abs(durations["claims_4gb.wav"] - 2.0) < 0.01  # what is there, not what the header claims
    assert all(m.endswith((".wav", ".flac")) for m in stored)
    st = json.loads(nels("--library", str(lib_dir), "stats", "--json").stdout)
    assert {Path(f["uri"]).name for f in st["failures"]} == bad and all(f["error"] for f in st["failures"])
    # a re-run: no crash, nothing added twice, nothing retried that failed for good
    p2 = nels("--library", str(lib_dir), "ingest", str(src), "--model", "baseline", "--json")
    assert p2.returncode == 1 and "Traceback" not in p2.stderr, p2.stderr
    assert json.loads(p2.stdout)["added"] == 0
    assert library_is_consistent(lib_dir) == counts


# -- two ingests of the same inputs at once -------------------------------------------------------------------------
def test_concurrent_ingests_never_process_an_item_twice(tmp_path):
    """Run A takes the first item and is held there (its server answers only when the test says so); run B,
    started meanwhile over the same inputs, leaves that item to A and does the rest; A then finds everything
    else done. Each item is fetched once, each clip counted once."""
    release = threading.Event()
    first = threading.Event()

    def held(path):
        if not first.is_set():
            first.set()
            release.wait(120)
        return audio(pcm16_wav(noise(3.0, 99)))

    routes = {"/held.wav": held} | {f"/f{i}.wav": audio(pcm16_wav(noise(3.0, 100 + i))) for i in range(8)}
    site = Site("127.0.0.1", routes)
    urls = [f"{site.url}/held.wav"] + [f"{site.url}/f{i}.wav" for i in range(8)]
    lib_dir = tmp_path / "lib"
    Library(lib_dir).close()
    reports = {}

    def run(name):
        lib = Library(lib_dir)
        try:
            reports[name] = ingest(lib, urls, model="baseline", options=IngestOptions(progress=False))
        finally:
            lib.close()

    a = threading.Thread(target=run, args=("a",))
    a.start()
    try:
        assert first.wait(60), "run A never asked for its first item"
        run("b")  # while A holds the first item
    finally:
        release.set()
        a.join(120)
        site.close()
    ra, rb = reports["a"], reports["b"]
    assert len(ra.added) + len(rb.added) == 9 and ra.duplicates + rb.duplicates == 0, (ra.to_dict(), rb.to_dict())
    assert len(ra.added) == 1 and rb.elsewhere == 1
    assert sorted(site.hits) == sorted(f"/{u.rsplit('/', 1)[1]}" for u in urls)  # each fetched once
    assert library_is_consistent(lib_dir)["clips"] == 9
    with sqlite3.connect(lib_dir / "nels.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM items WHERE claimed_by IS NOT NULL").fetchone()[0] == 0


# -- what killed runs leave behind ---------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_run_cleans_what_killed_runs_left(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"s{i}.wav").write_bytes(pcm16_wav(noise(3.0, 200 + i)))
    lib_dir = tmp_path / "lib"
    lib = Library(lib_dir)
    ingest(lib, [str(src / "s0.wav")], model="baseline", options=IngestOptions(progress=False))
    dead = _dead_pid()
    stale = lib_dir / f"ingest-{dead}-k1ll3d"
    (stale / "ytdlp-x").mkdir(parents=True)
    (stale / "ytdlp-x" / "video.webm.part").write_bytes(b"\0" * 100_000)  # a partial download
    legacy = lib_dir / "ingest-ab12cd34"  # named before the pid was in the name
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    live = lib_dir / f"ingest-{os.getpid()}-running"  # a run that is alive keeps its folder
    live.mkdir()
    part = lib_dir / "media" / "ab" / f"abcdef.wav.{dead}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"RIFF")
    # a killed run also left a claim on an item: it must not block that item for ever
    (iid,) = lib.catalogue.register_items([Item(str((src / "s1.wav").resolve()), "file", title="s1.wav")])
    assert lib.catalogue.claim_item(iid, f"{socket.gethostname()}:{dead}:deadbeef", retries=3)
    rep = ingest(lib, [str(src)], model="baseline", options=IngestOptions(progress=False))
    assert len(rep.added) == 2 and rep.elsewhere == 0, rep.to_dict()
    assert not stale.exists() and not legacy.exists() and not part.exists() and live.exists()
    assert [p.name for p in lib_dir.glob("ingest-*")] == [live.name]
    lib.close()


# -- a full disk --------------------------------------------------------------------------------------------------
FULL_DISK_SCRIPT = r"""
import json, os, resource, signal, subprocess, sys
from pathlib import Path
mnt, src, out, mode = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
lib = mnt / "lib"
env = dict(os.environ)
def limit():  # fallback without a namespace: a file size limit (EFBIG) plays the full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
cmd = [sys.executable, "-m", "nels.cli", "--library", str(lib), "ingest", src, "--model", "baseline", "--json"]
first = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limit if mode == "rlimit" else None)
left = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.name.endswith((".part", ".tmp"))
              or p.name.startswith("ingest-"))
check = subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]);"
                        "from hostile import library_is_consistent as c; print(json.dumps(c(__import__('pathlib').Path(sys.argv[2]))))",
                        sys.argv[5], str(lib)], capture_output=True, text=True, env=env)
if mode == "tmpfs":
    subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
second = subprocess.run(cmd, capture_output=True, text=True, env=env)
check2 = subprocess.run(check.args, capture_output=True, text=True, env=env)
out.write_text(json.dumps({"first": [first.returncode, first.stdout, first.stderr], "left": left,
                           "check": [check.returncode, check.stdout, check.stderr],
                           "second": [second.returncode, second.stdout, second.stderr],
                           "check2": [check2.returncode, check2.stdout, check2.stderr]}))
"""


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {d}"],
                           capture_output=True)
        return r.returncode == 0


@pytest.mark.parametrize("size_kb,seconds", [(700, 3.0), (1400, 0.5)])  # the media copy / SQLite hits the wall
def test_a_full_disk_is_said_rolled_back_and_cleaned_up(tmp_path, size_kb, seconds):
    """The library lives on a tmpfs of `size_kb` (in a user namespace): the ingest stops with "disk full", keeps
    a consistent library and no temp files; with room again, a re-run finishes the job."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        (src / f"s{i:02d}.wav").write_bytes(pcm16_wav(noise(seconds, 300 + i)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "full.py").write_text(FULL_DISK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, str(tmp_path / "full.py"), str(mnt), str(src), str(tmp_path / "out.json")]
    here = str(Path(__file__).resolve().parent)
    if _can_mount_tmpfs():
        cmd = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={size_kb}k tmpfs "$1" && shift && exec "$@"',
               "sh", str(mnt), *args, "tmpfs", here]
    elif size_kb == 700:
        cmd = [*args, "rlimit", here]
    else:
        pytest.skip("no tmpfs in a user namespace here (the file size limit variant ran instead)")
    subprocess.run(cmd, env=env, timeout=600, check=True)
    res = json.loads((tmp_path / "out.json").read_text())
    rc, stdout, stderr = res["first"]
    assert rc == 2 and "disk full" in stderr, (rc, stdout, stderr)
    assert "Traceback" not in stderr and "cannot rollback" not in stderr and "RuntimeError" not in stderr
    assert res["left"] == [], res["left"]  # no .part, .tmp or ingest-* left behind
    assert res["check"][0] == 0, res["check"][2][-3000:]
    counts = json.loads(res["check"][1])
    assert counts["clips"] < 40
    rc2, stdout2, stderr2 = res["second"]
    assert rc2 == 0, stderr2
    assert json.loads(stdout2)["added"] == 40 - counts["clips"]
    assert res["check2"][0] == 0 and json.loads(res["check2"][1])["clips"] == 40, res["check2"]


# -- property-based: decode + segment + encode on malformed input -----------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _encoded(fmt: str, codec: str, x: np.ndarray, rate: int = 16000) -> bytes:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = "mono"
        fr = av.AudioFrame.from_ndarray(x[None].astype(np.float32), format="flt", layout="mono")
        fr.sample_rate = rate
        for p in s.encode(fr):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return buf.getvalue()


def _seeds() -> dict[str, tuple[bytes, str]]:
    x = noise(2.5, 400)
    seeds = {"wav": (pcm16_wav(x), ".wav"), "float.wav": (float_wav(x), ".wav"), "flac": (flac_bytes(x), ".flac")}
    for name, fmt, codec, ext, rate in (("ogg", "ogg", "libvorbis", ".ogg", 16000), ("mp3", "mp3", "libmp3lame", ".mp3", 16000),
                                        ("opus", "ogg", "libopus", ".opus", 48000)):
        try:
            y = np.interp(np.arange(int(x.size * rate / 16000)) * 16000 / rate, np.arange(x.size), x) if rate != 16000 else x
            seeds[name] = (_encoded(fmt, codec, y, rate), ext)
        except Exception:  # an encoder missing from this PyAV build
            pass
    return seeds


SEEDS = _seeds()
_ENCODER = []


def _baseline():
    if not _ENCODER:
        from nels.encoders.base import create_encoder

        _ENCODER.append(create_encoder("baseline"))
    return _ENCODER[0]


def _check_pipeline(data: bytes, ext: str) -> None:
    """decode + segment + encode: a DecodeError (TooLong for a header claiming hours), or finite output."""
    from nels.audio.decode import decode
    from nels.errors import DecodeError
    from nels.ingest.mapper import TooLong, encode_file

    with tempfile.NamedTemporaryFile(suffix=ext) as f:
        f.write(data)
        f.flush()
        try:
            duration, starts, ends, vectors, probs = encode_file(Path(f.name), [_baseline()], max_duration=60)
        except (DecodeError, TooLong):
            pass
        else:
            assert np.isfinite(duration) and duration >= 0
            assert len(starts) == len(ends) and (np.asarray(ends) > np.asarray(starts)).all()
            for _, v in vectors.values():
                assert np.isfinite(v).all() and len(v) == len(starts)
    try:
        x = decode(data, max_seconds=30)
    except DecodeError:
        return
    assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max(initial=0) <= 1e4


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data, ext = SEEDS[name]
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):  # overwrite bytes, most often in the header
        pos = draw(st.one_of(st.integers(0, min(64, len(b) - 1)), st.integers(0, len(b) - 1)))
        b[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # a 32-bit field (sizes, rates, channel counts) set to an extreme
        pos = draw(st.integers(0, min(60, len(b) - 4)))
        b[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x01\0\0\0", b"\xff\xff\xff\x7f"]))
    cut = draw(st.one_of(st.none(), st.integers(0, len(b))))
    if cut is not None:
        b = b[:cut]
    return bytes(b), ext


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(mutated())
def test_malformed_containers_give_a_decode_error_or_finite_output(case):
    _check_pipeline(*case)


@settings(max_examples=40, deadline=None, database=None)
@given(st.binary(min_size=0, max_size=4096), st.sampled_from([".wav", ".mp3", ".flac", ".ogg", ".bin"]))
def test_random_bytes_give_a_decode_error_or_finite_output(data, ext):
    _check_pipeline(data, ext)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.sampled_from([0.0, 1.0, -1.0, 1e-30, 3.0, 999.0, 1001.0, 1e30, -1e30, np.inf, -np.inf, np.nan]),
                min_size=1, max_size=8),
       st.integers(1, 3))
def test_float_wavs_with_extreme_samples_are_refused_or_finite(values, seconds):
    x = noise(float(seconds), 500)
    idx = np.linspace(0, x.size - 1, len(values)).astype(int)
    x[idx] = np.asarray(values, np.float32)
    _check_pipeline(float_wav(x), ".wav")


def test_the_catalogue_refuses_non_finite_numbers_and_keeps_no_orphan_media(tmp_path):
    """The last line of defence: whatever an encoder produced, NaN never reaches the catalogue, and the media
    file placed for the refused clip is removed (issue 17: an orphan media file was left)."""
    from nels.errors import RejectedError
    from nels.ingest.writer import write
    from nels.ingest.mapper import Outcome
    from nels.store.library import ClipRecord

    lib = Library(tmp_path / "lib")
    (iid,) = lib.catalogue.register_items([Item(str(tmp_path / "a.wav"), "file", title="a.wav")])
    f = tmp_path / "a.wav"
    f.write_bytes(pcm16_wav(noise(2.0, 600)))
    vecs = np.ones((1, 8), np.float32)
    probs = np.array([[np.nan, 0.5]], np.float32)
    rec = ClipRecord("f" * 64, f, 2.0, {"source_uri": str(f)}, np.array([0.0]), np.array([2.0]),
                     {"s": ("m", vecs)}, ("m", ["x", "y"], probs), media_ext=".wav")
    with pytest.raises(RejectedError, match="non-finite"):
        lib.store_clip(rec, iid)
    assert not [p for p in (lib.path / "media").rglob("*") if p.is_file()]
    assert lib.stats()["clips"] == 0
    # through the writer, the item fails (with the reason) and the batch could go on
    assert write(lib, Outcome(iid, str(f), "added", record=rec, content_hash="f" * 64), retries=3) == "failed"
    (uri, error), = lib.catalogue.failed_items([iid])
    assert "non-finite" in error and f.exists()  # the user's own file is never touched
    lib.close()
