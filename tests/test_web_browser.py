"""The site in a real browser (Playwright + Debian's chromium) against `nels serve` run as a subprocess."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("NELS_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

from devserver import CHROMIUM_ARGS as BASE_ARGS  # noqa: E402
from devserver import Server as _Server  # noqa: E402
from devserver import build_library, synth_sounds, write_wav  # noqa: E402
from devserver import tone as _tone  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token"
DEFAULT_MODEL = ROOT / "nels" / "data" / "models" / "esc50-cnn" / "model.json"


def Server(library: Path) -> _Server:
    return _Server(library, admin_token=TOKEN)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("webui")
    build_library(root)
    q = root / "queries"
    q.mkdir()
    sounds = synth_sounds()
    write_wav(q / "tone.wav", _tone(1000, 2))
    write_wav(q / "clicks.wav", sounds["clicks"][: 3 * 16000])
    write_wav(q / "mic.wav", _tone(1000, 4))  # what the fake microphone "hears"
    return root


@pytest.fixture(scope="module")
def server(workdir):
    srv = Server(workdir / "library").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, workdir):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS + [
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={workdir / 'queries' / 'mic.wav'}"])
    yield b
    b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 844})  # phone-sized
    ctx.grant_permissions(["microphone"], origin=server.url)
    pg = ctx.new_page()
    pg.set_default_timeout(15000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def _upload(page, path: Path):
    page.set_input_files("#audio-file", str(path))
    page.wait_for_selector("#results .result")


def test_upload_search_plays_from_the_segment(page, server, workdir):
    page.goto(server.url + "/")
    _upload(page, workdir / "queries" / "tone.wav")
    first = page.locator("#results .result").first
    assert "tone_late" in first.locator("h2 a").inner_text()
    start = float(first.get_attribute("data-start"))
    assert start >= 2.0
    assert first.locator(".spec img").evaluate("img => img.complete && img.naturalWidth > 0") or \
        page.wait_for_function("() => document.querySelector('.result .spec img').naturalWidth > 0")
    assert "Why:" in first.inner_text()
    first.locator("button.play").click()
    page.wait_for_function("s => { const a = document.querySelector('.result audio');"
                           " return a && !a.paused && a.currentTime >= s; }", arg=start, timeout=10000)
    assert page.evaluate("() => document.querySelector('.result audio').currentTime") >= start
    # the native play control also starts at the segment
    second = page.locator("#results .result").nth(1)
    s2 = float(second.get_attribute("data-start"))
    second.locator("audio").evaluate("a => a.play()")
    page.wait_for_function("s => { const a = document.querySelectorAll('.result audio')[1];"
                           " return !a.paused && a.currentTime >= s; }", arg=s2, timeout=10000)


def test_upload_of_another_sound(page, server, workdir):
    page.goto(server.url + "/")
    _upload(page, workdir / "queries" / "clicks.wav")
    assert "clicks" in page.locator("#results .result h2 a").first.inner_text()
    assert "acoustic" in page.locator("#status").inner_text()


def test_microphone_recording_query(page, server):
    page.goto(server.url + "/")
    page.click("#record")
    page.wait_for_selector("#record[aria-pressed=true]")
    page.wait_for_timeout(2500)
    page.click("#record")
    page.wait_for_selector("#results .result")
    assert "tone_late" in page.locator("#results .result h2 a").first.inner_text()


def test_feedback_persists_across_server_restart(page, server, workdir):
    page.goto(server.url + "/")
    _upload(page, workdir / "queries" / "tone.wav")
    yes = page.locator("#results .result").first.locator(".fb button.yes")
    yes.click()
    page.wait_for_selector("#results .result >> nth=0 >> .fb button.yes[aria-pressed=true]")
    server.stop()
    server.start()
    page.goto(server.url + "/")
    _upload(page, workdir / "queries" / "tone.wav")
    page.wait_for_selector("#results .result >> nth=0 >> .fb button.yes[aria-pressed=true]")
    assert page.locator("#results .result").first.locator(".fb button.no").get_attribute("aria-pressed") == "false"


def test_clip_page_timeline(page, server, workdir):
    page.goto(server.url + "/")
    _upload(page, workdir / "queries" / "clicks.wav")
    page.locator("#results .result h2 a").first.click()
    page.wait_for_selector("#clip h1")
    assert "clicks" in page.locator("#clip h1").inner_text()
    page.locator(".events button").nth(1).click()
    page.wait_for_function("() => { const a = document.querySelector('#clip-audio'); return !a.paused && a.currentTime >= 0.9; }")


def test_admin_without_token_is_refused(page, server):
    page.goto(server.url + "/admin")
    page.fill("#crawl-queries", "thunder")
    page.click("#crawl-form button[type=submit]")
    page.wait_for_selector("#admin-msg.error")
    msg = page.locator("#admin-msg").inner_text()
    assert "Refused (401)" in msg and "token" in msg
    page.fill("#token", "wrong-token")
    page.click("#token-form button[type=submit]")
    page.fill("#ingest-urls", "https://example.org/a.wav")
    page.click("#ingest-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#admin-msg').textContent.includes('403')")
    # with the right token, the SSRF guard still refuses a private address
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#jobs li")
    page.fill("#ingest-urls", "http://169.254.169.254/latest/meta-data/")
    page.click("#ingest-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#admin-msg').textContent.includes('non-public')")


def test_admin_page_says_admin_is_off_without_a_token(browser, workdir):
    srv = _Server(workdir / "library", admin_token=None).start()  # no NELS_ADMIN_TOKEN: admin is off
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.goto(srv.url + "/admin")
        pg.wait_for_selector("#admin-off:not([hidden])")
        assert "NELS_ADMIN_TOKEN" in pg.locator("#admin-off").inner_text()
        assert "nels demo" in pg.locator("#admin-off").inner_text()
        assert pg.locator("#crawl-form").is_hidden() and pg.locator("#token-form").is_hidden()
        ctx.close()
    finally:
        srv.stop()


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the default CNN model (nels/data/models/esc50-cnn) is not built")
def test_text_search_with_default_model(browser, tmp_path):
    from nels.library import Library
    from nels.ingest.runner import IngestOptions, ingest

    src = tmp_path / "sounds"
    src.mkdir()
    for name, x in synth_sounds().items():
        write_wav(src / f"{name}.wav", x)
    lib = Library(tmp_path / "lib")
    ingest(lib, [str(src)], model="default", options=IngestOptions(progress=False))
    lib.save_indexes()
    lib.close()
    srv = Server(tmp_path / "lib").start()
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.goto(srv.url + "/?q=clock+tick")
        pg.wait_for_function("() => document.body.dataset.results === 'ready' || "
                             "document.querySelector('#status.error')", timeout=120000)
        assert pg.locator("#results .result").count() > 0 or "no known sound" in pg.locator("#status").inner_text()
        if pg.locator("#results .result").count():
            # text search is fused here (joint space shipped): each mode's own score shows, not the rank fusion's
            shown = pg.locator("#results .result .score").first.inner_text()
            assert "joint" in shown and "linguistic" in shown, shown
            assert "rank-fusion" in pg.locator("#results .result .score").first.get_attribute("title")
        ctx.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp_path / "lib", ignore_errors=True)
