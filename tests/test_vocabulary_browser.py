"""The site's vocabulary page in a real browser: every class with its segment count, each a link to a search
whose answer shows a calibrated relevance; an out-of-vocabulary query shows the notice (issue 18)."""
from __future__ import annotations

from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from devserver import CHROMIUM_ARGS, Server, synth_sounds, write_wav  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = __import__("os").environ.get("NELS_CHROMIUM", "/usr/bin/chromium")
DEFAULT_MODEL = ROOT / "nels" / "data" / "models" / "esc50-cnn" / "model.json"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
              pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the default CNN model is not built")]


def test_vocabulary_page_lists_classes_with_counts_and_links_to_search(tmp_path):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.search.vocabulary import library_vocabulary

    src = tmp_path / "sounds"
    src.mkdir()
    for name, x in synth_sounds().items():
        write_wav(src / f"{name}.wav", x)
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(src)], model="default", options=IngestOptions(progress=False))
    lib.save_indexes()
    top = library_vocabulary(lib)["models"][0]["labels"][0]  # the most frequent class
    lib.close()
    srv = Server(tmp_path / "lib").start()
    try:
        with sync_api.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pg = b.new_page()
            pg.goto(srv.url + "/vocabulary")
            pg.wait_for_selector("#vocabulary li.facet")
            assert pg.locator("#vocabulary li.facet").count() == 50  # every class of the CNN, present or not
            first = pg.locator("#vocabulary li.facet").first
            assert first.locator("a").inner_text() == top["name"]
            assert first.locator(".count").inner_text() == str(top["segments"])
            first.locator("a").click()
            pg.wait_for_function("() => document.body.dataset.results === 'ready'", timeout=120000)
            assert "relevance" in pg.locator("#results .result .score").first.inner_text()
            pg.goto(srv.url + "/?q=guitar")
            pg.wait_for_function("() => document.body.dataset.results === 'ready' || "
                                 "document.querySelector('#status.error')", timeout=120000)
            shown = pg.locator("#query-info").inner_text() + pg.locator("#status").inner_text()
            assert "NELS has no class for 'guitar'" in shown, shown
            b.close()
    finally:
        srv.stop()
