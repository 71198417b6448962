"""The clip page's first paint (issue 18, section 4: <= 1 s for a 1-hour file, also right after a server start):
the page's answer makes the browser ask for the clip's data while it loads the scripts (a preload Link header
for the very URL clip.js fetches), and that data (the timeline: events and groups, no segments) is read from each
segment's top label alone, giving the same events as the full clip. The timing itself is bench/bench_clip_page.py's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from test_clip_page import library  # noqa: E402,F401 - the fixture

CLIP_JS = Path(__file__).resolve().parents[1] / "nels" / "web" / "static" / "clip.js"


@pytest.fixture()
def client(library):  # noqa: F811
    import importlib

    import plugins.tones as mod
    from nels.web.app import create_app

    importlib.reload(mod)
    with TestClient(create_app(library[0])) as c:
        yield c


def test_the_clip_page_preloads_the_data_its_script_asks_for(client, library):  # noqa: F811
    cid = library[1]["long"]
    r = client.get(f"/clip/{cid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    m = re.fullmatch(r"<([^>]+)>; rel=preload; as=fetch; crossorigin=anonymous", r.headers.get("link", ""))
    assert m, r.headers.get("link")
    # clip.js's first request: api(`/api/clips/${id}?segments=false`) (a fetch with no credentials mode set:
    # same-origin, which a crossorigin=anonymous preload matches)
    template = re.search(r"api\(`(/api/clips/\$\{id\}\?segments=false)`\)", CLIP_JS.read_text())
    assert template, "clip.js no longer asks for /api/clips/${id}?segments=false: update the preload in site.py"
    assert m.group(1) == template.group(1).replace("${id}", str(cid))
    assert client.get(m.group(1)).status_code == 200


def test_the_timeline_answer_has_the_full_clips_events_without_its_segments(client, library):  # noqa: F811
    cid = library[1]["long"]
    light = client.get(f"/api/clips/{cid}", params={"segments": "false"}).json()
    full = client.get(f"/api/clips/{cid}").json()
    assert "segments" not in light and len(full["segments"]) == light["n_segments"] == full["n_segments"] > 100
    assert light["events"] == full["events"] and light["event_groups"] == full["event_groups"]
    assert len(light["events"]) < 20  # runs, not one event per segment
    assert {k: v for k, v in light.items() if k not in ("segments",)} == \
        {k: v for k, v in full.items() if k not in ("segments",)}
    # asked again (the memo) and asked in the other order: the same answers
    assert client.get(f"/api/clips/{cid}", params={"segments": "false"}).json() == light
    assert client.get(f"/api/clips/{cid}").json() == full


def test_the_catalogues_timeline_gives_each_segments_labels(library):  # noqa: F811
    from nels.library import Library

    with Library(library[0]) as lib:
        for cid in library[1].values():
            full, light = lib.clip(cid), lib.catalogue.clip_timeline(cid)
            assert [s["segment_id"] for s in light["segments"]] == [s["segment_id"] for s in full["segments"]]
            for a, b in zip(light["segments"], full["segments"]):
                assert (a["start"], a["end"]) == (b["start"], b["end"])
                assert a["labels"] == b["labels"] and a["labels"][0]["prob"] == max(x["prob"] for x in b["labels"])
        assert lib.catalogue.clip_timeline(10 ** 9) is None
