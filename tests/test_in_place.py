"""`nels ingest --in-place` (issue 18, section 6): local files are referenced where they are, not copied; every
reader of a clip's audio (search, the website's media, download and pictures, re-index, remove) goes through the
library's one verified `media_file`; moved and changed originals are reported by `stats`, `check` and /api/stats;
`remove` never deletes the user's file; and /media serves only registered, unchanged originals."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import synth, write_wav
from nels.cli import main

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

TOKEN = "in-place-test-token"
KINDS = ["tone", "high", "noise", "clicks"]


def nels(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture
def recordings(tmp_path) -> Path:
    """A user's folder of four synthesised recordings (4 s each)."""
    d = tmp_path / "recordings"
    for i, kind in enumerate(KINDS):
        write_wav(d / f"{kind}.wav", synth(kind, seconds=4.0, seed=i))
    return d


def ingest_in_place(capsys, lib: Path, *inputs: Path, model: str = "baseline") -> dict:
    rc, out, err = nels(capsys, "--library", str(lib), "ingest", *map(str, inputs), "--in-place", "--model", model,
                        "--json")
    assert rc == 0, err
    return json.loads(out)


def clip_ids(lib: Path) -> dict[str, int]:
    """file name -> clip id."""
    with sqlite3.connect(lib / "nels.db") as conn:
        return {Path(p).name: i for i, p in conn.execute("SELECT id, media_path FROM clips")}


def client(lib: Path) -> TestClient:
    from nels.web.app import create_app

    return TestClient(create_app(lib, admin_token=TOKEN), raise_server_exceptions=False)


def test_in_place_makes_no_copy_and_search_media_and_pictures_work(tmp_path, recordings, capsys):
    audio = size_of(recordings)
    lib, copied = tmp_path / "lib", tmp_path / "copied"
    rep = ingest_in_place(capsys, lib, recordings)
    assert rep["added"] == 4 and rep["in_place"] == 4
    rc, out, err = nels(capsys, "--library", str(copied), "ingest", str(recordings), "--model", "baseline")
    assert rc == 0 and "kept in place" not in out
    assert size_of(lib / "media") == 0 and size_of(copied / "media") == audio  # the copy holds every byte once more
    assert size_of(copied) - size_of(lib) >= audio * 0.95
    ids = clip_ids(lib)
    assert {Path(p).parent for p in _media_paths(lib)} == {recordings.resolve()}
    # search by example finds the clip itself, reading the original
    rc, out, err = nels(capsys, "--library", str(lib), "search", "--audio", str(recordings / "high.wav"), "--local",
                        "--json", "-k", "3")
    assert rc == 0, err
    assert json.loads(out)["results"][0]["clip_id"] == ids["high.wav"]
    with client(lib) as c:
        cid = ids["tone.wav"]
        r = c.get(f"/media/{cid}")
        assert r.status_code == 200 and r.content == (recordings / "tone.wav").read_bytes()
        assert r.headers["content-type"] == "audio/wav"
        r = c.get(f"/media/{cid}", headers={"Range": "bytes=0-99"})
        assert r.status_code == 206 and r.content == (recordings / "tone.wav").read_bytes()[:100]
        assert c.get(f"/api/clips/{cid}/download").content == (recordings / "tone.wav").read_bytes()
        for url in (f"/api/spectrogram/{cid}.png", f"/api/clips/{cid}/view.png?start=0&end=2"):
            r = c.get(url)
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", url
        info = c.get(f"/api/clips/{cid}").json()
        assert info["in_place"] is True and "media_path" not in info and "media_size" not in info
        assert str(recordings) not in json.dumps(info)  # where the user's file lives is not public
        assert c.get(f"/api/clips/{cid}/similar").status_code == 200
        st = c.get("/api/stats").json()
        assert st["in_place"] == {"clips": 4, "missing": [], "changed": []}


def _media_paths(lib: Path) -> list[str]:
    with sqlite3.connect(lib / "nels.db") as conn:
        return [r[0] for r in conn.execute("SELECT media_path FROM clips")]


def test_moved_changed_and_touched_originals(tmp_path, recordings, capsys):
    lib = tmp_path / "lib"
    ingest_in_place(capsys, lib, recordings)
    ids = clip_ids(lib)
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    (recordings / "tone.wav").rename(elsewhere / "tone.wav")  # moved
    data = bytearray((recordings / "high.wav").read_bytes())  # edited: same size, other samples
    data[-200:] = bytes(200)
    (recordings / "high.wav").write_bytes(bytes(data))
    noise = recordings / "noise.wav"  # touched: a new time, the same content
    os.utime(noise, ns=(noise.stat().st_atime_ns, noise.stat().st_mtime_ns + 5_000_000_000))

    rc, out, err = nels(capsys, "--library", str(lib), "stats", "--json")
    ip = json.loads(out)["in_place"]
    assert ip["clips"] == 4
    assert ip["missing"] == [{"clip_id": ids["tone.wav"], "path": str((recordings / "tone.wav").resolve())}]
    assert ip["changed"] == [{"clip_id": ids["high.wav"], "path": str((recordings / "high.wav").resolve())}]
    rc, out, err = nels(capsys, "--library", str(lib), "stats")
    assert "1 missing, 1 changed" in out and f"clip {ids['tone.wav']}: MISSING" in out, out
    rc, out, err = nels(capsys, "--library", str(lib), "check")
    assert rc == 1 and "2 problems" in out and f"clip {ids['high.wav']}: CHANGED" in out, out
    rc, out, err = nels(capsys, "--library", str(lib), "check", "--hash", "--json")
    assert rc == 1 and json.loads(out)["problems"] == 2

    with client(lib) as c:
        assert c.get(f"/media/{ids['tone.wav']}").status_code == 404
        r = c.get(f"/media/{ids['high.wav']}")
        assert r.status_code == 409 and "changed" in r.json()["error"]
        assert c.get(f"/api/spectrogram/{ids['high.wav']}.png").status_code == 409
        assert c.get(f"/media/{ids['noise.wav']}").content == noise.read_bytes()  # touched only: still served
        public = c.get("/api/stats").json()["in_place"]
        assert public["missing"] == [{"clip_id": ids["tone.wav"]}]  # which clips; where the files are: admin only
        admin = c.get("/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()["in_place"]
        assert admin["changed"][0]["path"].endswith("high.wav")

    # the moved file ingested where it is now: the same clip references it again
    rc, out, err = nels(capsys, "--library", str(lib), "ingest", str(elsewhere), "--in-place")
    assert rc == 0 and "referenced here now" in out, out
    assert clip_ids(lib)["tone.wav"] == ids["tone.wav"]
    rc, out, err = nels(capsys, "--library", str(lib), "stats", "--json")
    ip = json.loads(out)["in_place"]
    assert ip["missing"] == [] and [p["clip_id"] for p in ip["changed"]] == [ids["high.wav"]]
    with client(lib) as c:
        assert c.get(f"/media/{ids['tone.wav']}").content == (elsewhere / "tone.wav").read_bytes()


def test_remove_never_deletes_the_original_and_reingest_is_already_in_the_library(tmp_path, recordings, capsys):
    lib = tmp_path / "lib"
    ingest_in_place(capsys, lib, recordings)
    before = {f.name: f.read_bytes() for f in recordings.iterdir()}
    rc, out, err = nels(capsys, "--library", str(lib), "ingest", str(recordings), "--in-place")
    assert rc == 0 and "already in the library" in out, out
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "again.wav").write_bytes(before["tone.wav"])
    rc, out, err = nels(capsys, "--library", str(lib), "ingest", str(tmp_path / "copy"), "--in-place")
    assert rc == 0 and "1 already in the library (the same audio)" in out, out
    ids = clip_ids(lib)
    assert len(ids) == 4
    rc, out, err = nels(capsys, "--library", str(lib), "remove", str(ids["clicks.wav"]), str(ids["tone.wav"]))
    assert rc == 0 and "removed 2 clips" in out
    assert {f.name: f.read_bytes() for f in recordings.iterdir()} == before  # the user's files, untouched
    rc, out, err = nels(capsys, "--library", str(lib), "check")
    assert rc == 0 and "2 kept in place" in out
    # removed, then ingested again: a clip again
    rep = ingest_in_place(capsys, lib, recordings / "clicks.wav")
    assert rep["added"] == 1 and rep["in_place"] == 1


def test_reindex_skips_a_missing_original_and_loses_nothing(tmp_path, recordings, capsys):
    lib = tmp_path / "lib"
    ingest_in_place(capsys, lib, recordings)
    ids = clip_ids(lib)
    gone = recordings / "noise.wav"
    kept = gone.read_bytes()
    gone.unlink()
    with sqlite3.connect(lib / "nels.db") as conn:
        segs = conn.execute("SELECT COUNT(*) FROM segments WHERE clip_id=?", (ids["noise.wav"],)).fetchone()[0]
    rc, out, err = nels(capsys, "--library", str(lib), "reindex", "--model", "default", "--yes")
    assert rc == 1, err
    assert f"clip {ids['noise.wav']}: its original {gone.resolve()} is missing" in err
    assert "re-indexed 3 clips" in out and "1 kept in place with a missing or changed original" in out, out
    with sqlite3.connect(lib / "nels.db") as conn:
        models = dict(conn.execute("SELECT s.clip_id, MIN(v.model) FROM vectors v JOIN segments s ON"
                                   " s.id=v.segment_id WHERE v.space='baseline' GROUP BY s.clip_id").fetchall())
        assert set(models) == {ids["noise.wav"]}  # its vectors are still there; the others were re-encoded
        assert conn.execute("SELECT COUNT(*) FROM segments WHERE clip_id=?", (ids["noise.wav"],)).fetchone()[0] == segs
    gone.write_bytes(kept)  # back (a new time, the same content): the next re-index encodes it
    rc, out, err = nels(capsys, "--library", str(lib), "reindex", "--yes")
    assert rc == 0 and "re-indexed 1 clips" in out, (out, err)


def test_hostile_paths_are_never_served_or_deleted(tmp_path, recordings, capsys):
    lib = tmp_path / "lib"
    ingest_in_place(capsys, lib, recordings)
    ids = clip_ids(lib)
    secret = tmp_path / "secret.wav"  # a file of the same kind and size that is no clip
    secret.write_bytes(b"SECRET" + (recordings / "tone.wav").read_bytes()[6:])
    # an original replaced by a link to another file
    link = recordings / "tone.wav"
    link.unlink()
    link.symlink_to(secret)
    # catalogue rows pointing elsewhere: an absolute path that is no clip's original, a path out of media/
    with sqlite3.connect(lib / "nels.db") as conn:
        conn.execute("UPDATE clips SET media_path=?, media_size=NULL, media_mtime_ns=NULL WHERE id=?",
                     (str(secret), ids["high.wav"]))
        conn.execute("UPDATE clips SET media_path=?, media_size=NULL, media_mtime_ns=NULL WHERE id=?",
                     (os.path.relpath(secret, lib), ids["noise.wav"]))
    with client(lib) as c:
        for cid in (ids["tone.wav"], ids["high.wav"], ids["noise.wav"]):
            for url in (f"/media/{cid}", f"/api/clips/{cid}/download", f"/api/spectrogram/{cid}.png"):
                r = c.get(url)
                assert r.status_code in (404, 409) and b"SECRET" not in r.content, (url, r.status_code)
                assert str(tmp_path) not in r.text
        for bad in ("/media/../secret.wav", "/media/%2e%2e%2fsecret.wav", f"/media/{ids['clicks.wav']}/../../x"):
            r = c.get(bad)
            assert r.status_code in (404, 422) and b"SECRET" not in r.content
    rc, out, err = nels(capsys, "--library", str(lib), "remove", str(ids["high.wav"]), str(ids["noise.wav"]),
                        str(ids["tone.wav"]))
    assert rc == 0 and secret.exists() and link.is_symlink()  # nothing outside media/ is ever deleted
    from nels.errors import LibraryError
    from nels.library import Library

    with Library(lib) as library:
        with pytest.raises(LibraryError, match="not a file of the library's media folder"):
            library.media.delete(str(secret))
    assert secret.exists()


def test_in_place_is_refused_for_a_library_on_object_storage(tmp_path, recordings, monkeypatch):
    pytest.importorskip("fsspec")
    from nels.errors import LibraryError
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    monkeypatch.setenv("NELS_CACHE", str(tmp_path / "cache"))
    lib = Library("memory://bucket/in-place-lib")
    try:
        with pytest.raises(LibraryError, match="object storage"):
            ingest(lib, [str(recordings)], "baseline", IngestOptions(in_place=True, progress=False))
        assert lib.stats()["clips"] == 0
    finally:
        lib.close()


# -- the store's part, on both catalogues ---------------------------------------------------------------------------
from test_catalogue_postgres import pg_server, pg_url  # noqa: E402,F401 - fixtures: a PostgreSQL for this module


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_at(request, tmp_path) -> str:
    """Where a library's catalogue is: its own nels.db, or a fresh schema on a PostgreSQL server."""
    return str(tmp_path / "lib" / "nels.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _record(path: Path):
    import numpy as np

    from nels.store.library import ClipRecord, content_hash, file_state

    v = np.eye(2, 4, dtype=np.float32)
    return ClipRecord(content_hash(path), path, 2.0, {"source_uri": str(path), "title": path.name}, np.array([0.0, 1.0]),
                      np.array([2.0, 3.0]), {"s": ("m", v)}, ("m", ["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]])),
                      original=file_state(path))


def test_originals_in_the_catalogue_on_sqlite_and_postgresql(tmp_path, catalogue_at):
    from nels.library import Library
    from nels.store.library import MediaUnavailable

    f = write_wav(tmp_path / "user" / "rain.wav", synth("noise", seconds=2.0))
    with Library(tmp_path / "lib", catalogue=catalogue_at) as lib:
        cid, added = lib.store_clip(_record(f))
        assert added and lib.catalogue.clip_media(cid)["media_path"] == str(f.resolve())
        assert lib.store_clip(_record(f)) == (cid, False)  # the same content: already in the library
        assert not any((tmp_path / "lib" / "media").rglob("*.*"))
        assert lib.media_file(str(f)) == f
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: verified by its hash, time recorded
        assert lib.media_file(str(f)) == f
        assert lib.catalogue.originals()[0]["mtime_ns"] == st.st_mtime_ns + 10**9
        moved = f.rename(tmp_path / "user" / "moved.wav")
        with pytest.raises(MediaUnavailable) as err:
            lib.media_file(str(f))
        assert err.value.reason == "missing" and err.value.clip_id == cid
        assert lib.stats()["in_place"]["missing"] == [{"clip_id": cid, "path": str(f)}]
        assert lib.relink_original(cid, moved, (moved.stat().st_size, moved.stat().st_mtime_ns))
        assert lib.media_file(str(moved)) == moved and lib.check_originals()["missing"] == []
        assert not lib.relink_original(cid, moved, (1, 1))  # its original is there: nothing to relink
        moved.write_bytes(moved.read_bytes()[:-2] + b"\x01\x02")  # edited in place
        with pytest.raises(MediaUnavailable, match="changed since it was ingested"):
            lib.media_file(str(moved))
        with pytest.raises(MediaUnavailable, match="not the original of any clip"):
            lib.media_file(str(tmp_path / "user" / "other.wav"))
        skipped = []  # what a batch over the library (learning pool, evaluations) gets: the clip left out, said why
        rows = lib.catalogue.clips(("id", "media_path"))
        assert list(lib.readable_media(rows, on_skip=lambda i, e: skipped.append((i, e.reason)))) == []
        assert skipped == [(cid, "changed")]
        assert lib.remove_clips([cid]) == 1 and moved.exists()
        assert lib.check_originals() == {"clips": 0, "missing": [], "changed": []}


def test_check_update_indexes_a_changed_original_again_and_forget_missing(tmp_path, recordings, capsys):
    lib = tmp_path / "lib"
    ingest_in_place(capsys, lib, recordings)
    ids = clip_ids(lib)
    write_wav(recordings / "high.wav", synth("chirp", seconds=3.0, seed=9))  # edited: other audio, other length
    (recordings / "clicks.wav").unlink()
    rc, out, err = nels(capsys, "--library", str(lib), "check", "--update", "--forget-missing")
    assert rc == 0, (out, err)
    assert f"clip {ids['clicks.wav']}: forgotten" in out and f"clip {ids['high.wav']}: changed original" in out
    now = clip_ids(lib)
    assert set(now) == {"tone.wav", "high.wav", "noise.wav"} and now["high.wav"] not in ids.values()
    rc, out, err = nels(capsys, "--library", str(lib), "check", "--hash")
    assert rc == 0 and "every clip's media is there and unchanged" in out
    with client(lib) as c:
        assert c.get(f"/media/{now['high.wav']}").content == (recordings / "high.wav").read_bytes()
        assert c.get(f"/api/clips/{now['high.wav']}").json()["duration"] == pytest.approx(3.0, abs=0.01)
        assert c.get(f"/media/{ids['high.wav']}").status_code == 404  # the old clip is gone
