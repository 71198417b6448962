"""Save a screenshot of a results page for the README.

    python bench/screenshot.py --library DIR [--query "dog barking"] [--audio FILE] [--out docs/screenshot.png]

Starts `nels serve` on 127.0.0.1 (a free port), runs one search in headless chromium and saves the page.
Text search is used when --query is given and the library has a classifier; otherwise an audio query
(--audio, else the first clip of the library). Without --library, a small synthesised library is built
in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # tests/devserver.py: the test helper that runs `nels serve`

from devserver import CHROMIUM, CHROMIUM_ARGS, Server, build_library  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=None, help="library folder (default: build a synthetic one)")
    p.add_argument("--query", default=None, help="text query (needs a library with a classifier)")
    p.add_argument("--audio", default=None, help="audio file to query with")
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=1400)
    p.add_argument("--results", type=int, default=4, help="results to show")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    tmp = tempfile.TemporaryDirectory(prefix="nels-shot-")
    library = Path(args.library) if args.library else build_library(Path(tmp.name))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Server(library) as srv, sync_playwright() as pw:
        modes = json.load(urllib.request.urlopen(f"{srv.url}/api/modes"))
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
        page.set_default_timeout(60000)
        page.goto(srv.url + "/")
        page.wait_for_function("() => document.querySelector('#library-line').textContent.length > 0")
        if args.query and modes["text"]:
            page.fill("#q", args.query)
            page.click("#search-btn")
        else:
            audio = Path(args.audio) if args.audio else None
            if audio is None:
                audio = Path(tmp.name) / "query.bin"
                audio.write_bytes(urllib.request.urlopen(f"{srv.url}/media/1").read())
            page.set_input_files("#audio-file", str(audio))
        page.wait_for_function("() => document.body.dataset.results === 'ready' || "
                               "document.querySelector('#status.error')")
        page.evaluate("n => document.querySelectorAll('#results .result').forEach((el, i) => { if (i >= n) el.remove(); })",
                      args.results)
        page.wait_for_function("() => [...document.querySelectorAll('.result .spec img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    tmp.cleanup()
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
