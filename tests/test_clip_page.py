"""The clip page of a long recording (issue 18, sections 4 and 6): events as runs grouped by label, the
zoomable view drawn per range and cached with bounds, download with licence and attribution, similar sounds."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import SR, write_wav  # noqa: E402


def tone(freq: float, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A library (tone classifier) with a 3-minute recording whose high tone flickers to a low tone for one
    short moment every 20 s, and three short clips: two middle tones and a high one."""
    import importlib

    from nels.encoders import registry
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    import plugins.tones as mod

    importlib.reload(mod)
    root = tmp_path_factory.mktemp("cliplib")
    parts = []
    for i in range(9):
        parts += [tone(3000, 19.6, seed=i), tone(300, 0.4, seed=100 + i)]
    write_wav(root / "in" / "long.wav", np.concatenate(parts))
    write_wav(root / "in" / "middle-a.wav", tone(1000, 4.0, seed=1))
    write_wav(root / "in" / "middle-b.wav", tone(1010, 4.0, seed=2))
    write_wav(root / "in" / "high.wav", tone(3000, 4.0, seed=3))
    with Library(root / "lib") as lib:
        rep = ingest(lib, [str(root / "in")], model="tones", options=IngestOptions(progress=False))
        assert len(rep.added) == 4
        ids = {lib.clip(c)["title"].split(".")[0]: c for c in rep.added}
    yield root / "lib", ids
    registry._REGISTRY.pop("tones", None)


@pytest.fixture()
def client(library):
    import importlib

    import plugins.tones as mod
    from nels.web.app import create_app

    importlib.reload(mod)
    with TestClient(create_app(library[0]), raise_server_exceptions=False) as c:
        yield c


def test_long_clip_events_are_runs_grouped_by_label(client, library):
    cid = library[1]["long"]
    full = client.get(f"/api/clips/{cid}").json()
    c = client.get(f"/api/clips/{cid}", params={"segments": "false"}).json()
    assert "segments" not in c and c["n_segments"] == len(full["segments"]) > 150
    # the one-segment flickers are absorbed: one high-tone run for 3 minutes, not a row per flicker
    assert [e["label"] for e in c["events"]] == ["high tone"], [(e["label"], e["start"], e["end"]) for e in c["events"]]
    assert c["events"][0]["start"] == 0.0 and c["events"][0]["end"] >= 179.0
    assert c["event_groups"] == [{"label": "high tone", "count": 1, "seconds": pytest.approx(c["events"][0]["end"])}]
    for key in ("view_url", "download_url", "similar_url", "attribution"):
        assert c[key], key


def test_view_is_drawn_per_range_and_cached_with_bounds(client, library):
    from PIL import Image

    lib_dir, ids = library
    cid = ids["long"]
    cache = lib_dir / "cache" / "spectrograms"
    whole = client.get(f"/api/clips/{cid}/view.png", params={"width": 1000, "height": 80})
    assert whole.status_code == 200 and whole.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(whole.content)).size == (1000, 80)
    part = client.get(f"/api/clips/{cid}/view.png", params={"start": 15, "end": 25, "width": 950, "height": 150})
    im = np.asarray(Image.open(io.BytesIO(part.content)).convert("L"), dtype=float)
    assert im.shape == (160, 1000)  # size classes: width up to a multiple of 100, height of 40
    assert part.content != whole.content
    # 10 s around the flicker at 19.6-20 s: the low tone shows in the zoomed view, in its own columns (460-500)
    spec = im[40:]
    typical = np.median(spec, axis=1)
    diff = np.abs(spec - typical[:, None]).mean(axis=0)
    assert diff[465:495].min() > 2.5 * np.median(diff), (diff[465:495].min(), np.median(diff))
    names = {p.name for p in cache.glob("*.png")}
    again = client.get(f"/api/clips/{cid}/view.png", params={"start": 15, "end": 25, "width": 950, "height": 150})
    assert again.content == part.content and {p.name for p in cache.glob("*.png")} == names  # served from cache
    # out of range: refused, nothing drawn
    assert client.get(f"/api/clips/{cid}/view.png", params={"start": 500}).status_code == 422
    assert client.get(f"/api/clips/{cid}/view.png", params={"start": 5, "end": 5}).status_code == 422
    assert client.get(f"/api/clips/{cid}/view.png", params={"width": 100000}).status_code == 422


def test_view_cache_stays_within_its_bounds(library, tmp_path):
    from nels.web.routes.clips import SpectrogramCache

    cache = SpectrogramCache(tmp_path / "c", max_files=3, max_bytes=10_000)
    for i in range(6):
        cache.put(f"{i}.png", b"x" * 1000)
    assert len(list((tmp_path / "c").glob("*.png"))) == 3


def test_download_names_the_file_and_carries_the_licence(client, library):
    cid = library[1]["high"]
    r = client.get(f"/api/clips/{cid}/download")
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="high.wav"'
    assert r.content == client.get(f"/media/{cid}").content
    c = client.get(f"/api/clips/{cid}", params={"segments": "false"}).json()
    assert "high.wav" in c["attribution"] and "licence" in c["attribution"]
    assert client.get("/api/clips/999999/download").status_code == 404


def test_similar_sounds_come_from_other_clips(client, library):
    ids = library[1]
    r = client.get(f"/api/clips/{ids['middle-a']}/similar", params={"start": 0, "end": 4, "k": 2})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res and ids["middle-a"] not in [x["clip_id"] for x in res]
    assert res[0]["clip_id"] == ids["middle-b"], [(x["title"], x["score"]) for x in res]
    # a range of the long recording: the high-tone clip comes first, the recording itself never
    res = client.get(f"/api/clips/{ids['long']}/similar", params={"start": 40, "end": 50}).json()["results"]
    assert res[0]["clip_id"] == ids["high"] and ids["long"] not in [x["clip_id"] for x in res]
    assert client.get(f"/api/clips/{ids['high']}/similar", params={"start": 99}).status_code == 422


def test_a_long_range_is_sampled_not_decoded_whole(library, monkeypatch):
    """An overview of more than SPARSE_SECONDS_PER_COLUMN per pixel (an hour over 1200 px) seeks to each column
    instead of decoding the whole range, and draws nearly the same picture."""
    from PIL import Image

    from nels.library import Library
    from nels.web import images

    lib_dir, ids = library
    with Library(lib_dir) as lib:
        media = lib.path / lib.catalogue.clip_media(ids["long"])["media_path"]
    full = np.asarray(Image.open(io.BytesIO(images.view_png(media, 0, 180, 100, 80))).convert("L"), float)  # 1.8 s/px
    monkeypatch.setattr(images, "SPARSE_SECONDS_PER_COLUMN", 1e9)  # force the whole decode
    whole = np.asarray(Image.open(io.BytesIO(images.view_png(media, 0, 180, 100, 80))).convert("L"), float)
    monkeypatch.undo()

    def no_decode(*a, **k):
        raise AssertionError("the sampled view decoded the whole range")

    monkeypatch.setattr(images, "read_range", no_decode)
    sampled = np.asarray(Image.open(io.BytesIO(images.view_png(media, 0, 180, 100, 80))).convert("L"), float)
    assert np.array_equal(sampled, full)
    # the same spectral picture: each frequency row's brightness along the clip, up to the overall gain (each
    # picture is scaled to its own loudest pixel; single pixels differ in the noise floor)
    rows_s, rows_w = sampled[20:].mean(axis=1), whole[20:].mean(axis=1)
    rows_s, rows_w = rows_s - rows_s.mean(), rows_w - rows_w.mean()
    assert np.abs(rows_s - rows_w).mean() < 6 and np.corrcoef(rows_s, rows_w)[0, 1] > 0.8, (rows_s, rows_w)
