"""The clip page of a long recording and the search filters in a real browser (Playwright + chromium) against
`nels serve` run as a subprocess: overview + zoomable detail, events grouped by label with jump links, similar
sounds, download with licence; sorting results from the filter box."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("NELS_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

from conftest import synth, write_wav  # noqa: E402
from devserver import CHROMIUM_ARGS, Server  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library

    root = tmp_path_factory.mktemp("clipsite")
    long_ = np.concatenate([synth(k, 30.0, seed=i) for i, k in enumerate(["tone", "noise", "clicks", "chirp"])])
    write_wav(root / "in" / "long recording.wav", long_)
    for i, (k, sec) in enumerate([("noise", 3.0), ("noise", 6.0), ("clicks", 4.0), ("tone", 5.0)]):
        write_wav(root / "in" / f"short-{k}-{i}.wav", synth(k, sec, seed=10 + i))
    with Library(root / "lib") as lib:
        rep = ingest(lib, [str(root / "in")], model="default", options=IngestOptions(progress=False))
        ids = {lib.clip(c)["title"]: c for c in rep.added}
    srv = Server(root / "lib").start(timeout=300)  # waits for readiness, however slow the machine
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield srv, browser, ids
        browser.close()
    srv.stop()


@pytest.fixture()
def page(site):
    srv, browser, _ = site
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def _loaded(page, sel: str) -> None:
    page.wait_for_function("(sel) => { const im = document.querySelector(sel);"
                           " return im && im.complete && im.naturalWidth > 0 && im.getAttribute('src'); }", arg=sel)


def test_clip_page_overview_detail_zoom_events_and_similar(site, page):
    srv, _, ids = site
    cid = ids["long recording.wav"]
    page.goto(f"{srv.url}/clip/{cid}")
    page.wait_for_function("() => document.body.dataset.clip === 'ready'")
    _loaded(page, "#ov-img")
    _loaded(page, "#detail-img")
    assert "start=0.00&end=120.00" in page.get_attribute("#ov-img", "src")  # the overview is the whole clip
    first = page.get_attribute("#detail-img", "src")
    assert "end=60.00" in first  # the detail starts on a minute
    assert page.locator("#detail-axis .tick").count() >= 4  # a readable time axis
    # zoom in: a shorter range, drawn for itself
    page.click(".zoom-controls button[title^='Zoom in']")
    page.wait_for_function("(old) => { const im = document.querySelector('#detail-img');"
                           " return im.dataset.src && im.dataset.src !== old; }", arg=first)
    _loaded(page, "#detail-img")
    src = page.get_attribute("#detail-img", "data-src")
    a, b = (float(src.split(k + "=")[1].split("&")[0]) for k in ("start", "end"))
    assert b - a == 30.0, src
    # dragging the detail view moves the range (many moves: the page must not trip the browser's history limit)
    box = page.locator("#detail").bounding_box()
    before = page.inner_text("#range-label")
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + 40, steps=150)
    page.mouse.up()
    page.wait_for_function("(old) => document.querySelector('#range-label').textContent !== old", arg=before)
    # events grouped by label, each group with its count; a jump link moves the view and plays from the event
    groups = page.locator(".event-groups details")
    assert groups.count() >= 2
    summary = groups.first.locator("summary").inner_text()
    assert "event" in summary
    last = page.locator(".event-groups details button").last
    label = last.get_attribute("aria-label")  # "Play LABEL at M:SS"
    last.click()
    page.wait_for_function("() => { const a = document.querySelector('#clip-audio'); return !a.paused; }")
    start = page.evaluate("() => document.querySelector('#clip-audio').currentTime")
    rng = page.inner_text("#range-label")
    assert start > 30 and label, (start, rng)
    # similar sounds from the range shown: other clips only
    page.click("#similar-btn")
    page.wait_for_function("() => document.body.dataset.similar === 'ready'")
    hrefs = page.eval_on_selector_all("#similar .result h2 a", "els => els.map(e => e.getAttribute('href'))")
    assert hrefs and not any(h.startswith(f"/clip/{cid}?") for h in hrefs), hrefs
    # licence and attribution next to the download link
    assert "Licence" in page.inner_text(".licence") and page.get_attribute("#download", "href").endswith("/download")


def test_results_sorted_from_the_filter_box_and_similar_link(site, page):
    srv, _, ids = site
    page.goto(f"{srv.url}/?q=white%20noise")
    page.wait_for_function("() => document.body.dataset.results === 'ready'")
    page.click("#filters summary")
    with page.expect_request(lambda r: "/api/search" in r.url and "sort=-duration" in r.url):
        page.select_option("#f-sort", "-duration")
    page.wait_for_function("() => new URLSearchParams(location.search).get('sort') === '-duration'")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('result')")
    metas = page.eval_on_selector_all("#results .result .meta > span:first-child", "els => els.map(e => e.textContent)")

    def seconds(text: str) -> float:  # "0:01.0–0:03.0 of 1:30.0 · ..." -> 90.0
        m, s_ = text.split(" of ")[1].split(" ")[0].split(":")
        return 60 * int(m) + float(s_)

    durs = [seconds(t) for t in metas]
    assert len(durs) >= 2 and durs == sorted(durs, reverse=True), metas
    # every result offers similar sounds: the clip page opens on that segment and runs the search
    link = page.locator("#results .result .similar-link").first
    assert "similar=" in link.get_attribute("href")
    link.click()
    page.wait_for_function("() => document.body.dataset.similar === 'ready'")
    assert page.locator("#similar > h2").inner_text().startswith("Similar sounds")
