"""CLI handlers for `nels search` and `nels tag`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nels import config
from nels.cli import print_json
from nels.errors import NelsError, QueryError


class ServerError(NelsError):
    """A `nels serve` that cannot be reached, or that refused the query (its message is kept)."""


def cli_search(args) -> int:
    """`nels search`: arguments are checked first (no model is loaded for a usage error); then a running
    `nels serve` of the same library answers (`--server URL`, or found through the library's server.json),
    else the search runs here. Both give the same dict, printed as JSON or as a table."""
    text = _check_arguments(args)
    if getattr(args, "label", None) is not None:
        _check_label(args.library, args.label)
    url = getattr(args, "server", None)
    found = None
    if url is None and not getattr(args, "local", False):
        found = find_server(args.library)
    answer = None
    if url is not None:
        answer = remote_search(url, args, text)
    elif found is not None:
        try:
            answer = remote_search(found, args, text)
        except ServerError as exc:
            if exc.args and str(exc).startswith("refused:"):
                raise
            print(f"nels: the library's server at {found} did not answer ({exc}); searching here", file=sys.stderr)
    if answer is None:
        answer = local_search(args, text)
    if args.json:
        print_json(answer)
    else:
        print_answer(answer)
    return 0


def _check_arguments(args) -> str | None:
    """The query text (None: none), after the checks that need no model: a usage error in milliseconds."""
    text = " ".join((args.text or "").split()) or None
    if text is None and args.audio is None:
        raise QueryError("empty query: give some text, --audio FILE, or both")
    if text is not None and len(text) > config.MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; the limit is {config.MAX_QUERY_CHARS}")
    if args.audio is not None and not Path(args.audio).expanduser().is_file():
        raise QueryError(f"{args.audio}: no such file" if not Path(args.audio).expanduser().exists()
                         else f"{args.audio}: not a file")
    if (args.start is not None or args.end is not None) and args.audio is None:
        raise QueryError("--start and --end cut the query audio: give --audio FILE")
    if args.start is not None and args.start < 0:
        raise QueryError("--start must be >= 0")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise QueryError("--end must be after --start")
    if not 1 <= args.k <= config.MAX_K:
        raise QueryError(f"-k must be between 1 and {config.MAX_K}")
    if args.page < 1:
        raise QueryError("--page must be >= 1")
    if args.mode == "acoustic" and args.audio is None:
        raise QueryError("acoustic mode needs an audio query (--audio FILE)")
    if args.mode == "linguistic" and text is None:
        raise QueryError("linguistic mode needs a text query")
    from nels.store.objectstore import resolve

    folder = resolve(args.library)[0]  # the folder, or the local folder of an s3://... library
    if (folder / "nels.db").exists():
        return text  # the common case, without importing the store (numpy) for a server search
    from nels.store.library import catalogue_location

    location = catalogue_location(folder)  # a file, or a PostgreSQL URL (checked when the library opens)
    if isinstance(location, Path) and not location.exists():
        from nels.errors import LibraryError

        raise LibraryError(f"no library at {args.library} (create one with 'nels ingest' or pass --library DIR)")
    return text


def _check_label(library: str, label: str) -> None:
    """--label must be a class of one of the library's models (else nothing could ever match)."""
    from nels.library import Library

    lib = Library(library, create=False)
    try:
        known = sorted({l for m in lib.catalogue.models() for l in m["labels"]})
    finally:
        lib.close()
    if not known:
        raise QueryError("--label filters by class, and this library's model has no classes (it was indexed"
                         " without a classifier)")
    if label not in known:
        import difflib

        close = difflib.get_close_matches(label, known, n=3, cutoff=0.5)
        raise QueryError(f"unknown label {label!r}: the library's models have no such class"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + "; 'nels vocabulary' lists them")


# -- a running server ----------------------------------------------------------------------------------------
def find_server(library: str) -> str | None:
    """The URL of a `nels serve` running on this library, from `<library>/server.json` (which the server
    writes once it listens and removes when it stops), if its process is alive and the file names this
    library; else None."""
    from nels.store.objectstore import resolve

    folder = resolve(library)[0]  # the folder, or the local folder of an s3://... library
    f = folder / config.SERVER_FILE
    try:
        info = json.loads(f.read_text())
        pid, url, lib = int(info["pid"]), str(info["url"]), info.get("library")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if lib is not None and Path(lib) != folder:
        return None  # a copied library folder: its server serves the original
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return url


def remote_search(url: str, args, text: str | None, timeout: float = 120.0) -> dict:
    """Ask a running `nels serve` at `url`: GET /api/search for text, POST /api/search with the file for
    audio. Its answer is the same dict as `local_search`'s."""
    import urllib.error
    import urllib.parse
    import urllib.request

    fields = {"q": text, "mode": args.mode, "k": args.k, "page": args.page, "label": args.label,
              "source": args.source, "min_duration": args.min_duration, "max_duration": args.max_duration}
    if args.audio is None:
        query = urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None})
        req = urllib.request.Request(f"{url.rstrip('/')}/api/search?{query}")
    else:
        fields.update(start=args.start, end=args.end)
        body, ctype = _multipart({k: v for k, v in fields.items() if v is not None}, Path(args.audio).expanduser())
        req = urllib.request.Request(f"{url.rstrip('/')}/api/search", data=body, method="POST",
                                     headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail")
        except ValueError:
            detail = None
        raise ServerError(f"refused: {detail or exc.reason} (HTTP {exc.code} from {url})") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _multipart(fields: dict, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and the file `path` as "audio"."""
    import uuid

    boundary = uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    name = path.name.replace('"', "_")
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{name}"\r\n'
               f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


# -- here ------------------------------------------------------------------------------------------------
def local_search(args, text: str | None) -> dict:
    """The search in this process; the answer has the shape of the API's GET /api/search (the results
    dict of `Results.to_dict()` plus query, k, page and has_more)."""
    print("nels: loading models… (a running 'nels serve' of this library answers searches in well under a"
          " second)", file=sys.stderr, flush=True)
    from nels.library import Library

    lib = Library(args.library, create=False)
    try:
        res = lib.search(text=text, audio=str(Path(args.audio).expanduser()) if args.audio else None, mode=args.mode,
                         k=args.k, page=args.page, start=args.start, end=args.end, label=args.label,
                         source=args.source, min_duration=args.min_duration, max_duration=args.max_duration)
        out = res.to_dict()
    finally:
        lib.close()
    query = text if text is not None else f"audio: {Path(args.audio).name}"
    out.update(query=query, k=args.k, page=args.page, has_more=len(res) >= args.k, sort="relevance")
    return out


def label_cell(labels: list[dict], width: int = 34) -> str:
    """A result's top labels for the table's labels column: whole "label prob" entries (at most two) that fit
    `width`; a name too long alone is shortened, never its number (cutting "chirping_birds 0.31" at the column's
    edge read as "chirping_birds 0")."""
    parts = [f"{l['label']} {l['prob']:.2f}" for l in labels[:2]]
    while len(parts) > 1 and len(", ".join(parts)) > width:
        parts.pop()
    if parts and len(parts[0]) > width:
        name, prob = parts[0].rsplit(" ", 1)
        parts[0] = name[:width - len(prob) - 2] + "… " + prob
    return ", ".join(parts)


def print_answer(d: dict) -> None:
    """The table of a search answer (a dict as `local_search` or the API return it)."""
    if d.get("query_labels"):
        guesses = ", ".join(f"{l['label']} ({l['prob']:.2f})" for l in d["query_labels"][:3])
        # "sounds like" only where a class is more likely than not; a speech file the ESC-50 CNN calls dog 0.30 is
        # no dog
        sure = max(l["prob"] for l in d["query_labels"]) >= 0.5
        print(("the query sounds like: " if sure else "no class is sure of the query; best guesses: ") + guesses)
    if d.get("suggested_tags"):
        print("tags for this sound: " + ", ".join(t["phrase"] for t in d["suggested_tags"]))
    # words near a query no class covers ("guitar": tin can, can opening) would only mislead
    if d.get("related_words") and (d.get("coverage") or {}).get("covered", True):
        print("related sound words: " + ", ".join(t["phrase"] for t in d["related_words"][:6]))
    if d.get("notice"):
        print(f"note: {d['notice']}")
    results = d.get("results") or []
    if not results:
        print("no results")
        return
    rel = any(r.get("relevance") is not None for r in results)
    col = "relevance" if rel else "score"
    print(f"{'#':>3} {col:>9} {'clip':>6} {'start':>7} {'end':>7}  {'labels':<34} source")
    first = 1 + (int(d.get("page") or 1) - 1) * int(d.get("k") or len(results))
    for i, r in enumerate(results, first):
        labels = label_cell(r.get("labels") or [])
        value = r.get("relevance") if rel else r.get("score")
        shown = f"{value:>9.2f}" if rel and value is not None else f"{value:>9.3f}" if value is not None else f"{'-':>9}"
        print(f"{i:>3} {shown} {r['clip_id']:>6} {r['start']:>7.2f} {r['end']:>7.2f}  {labels:<34}"
              f" {r.get('title') or r.get('source')}")
        print(f"{'':>15}why: {r.get('explanation')}")


def cli_tag(args) -> int:
    from nels.audio.decode import probe_duration
    from nels.encoders.base import load_encoder
    from nels.errors import DecodeError
    from nels.ingest.progress import AudioBar
    from nels.search.tag import tag_file

    try:
        total = probe_duration(args.file)
    except DecodeError:
        total = None  # tag_file reports the error
    encoder = load_encoder(args.model)
    # progress in seconds of audio, with the rate and an ETA (a 30-minute file takes a minute or more)
    bar = AudioBar("tag", total=total, enabled=not args.json)
    try:
        events = tag_file(args.file, encoder, args.threshold, max_gap=getattr(args, "max_gap", 1.0),
                          min_duration=getattr(args, "min_duration", 0.0), on_audio=lambda s: bar.partial("file", s))
    finally:
        bar.close()
    if args.json:
        print_json(events)
        return 0
    if not events:
        print(f"no sound event above p={args.threshold}")
    for e in events:
        print(f"{e['start']:>8.2f} - {e['end']:>8.2f}  {e['label']:<20} p={e['prob']:.2f}")
    if len(events) > 10:  # a long recording: what it holds, by label
        from nels.ingest.progress import clock
        from nels.search.tag import group_by_label

        print(f"{len(events)} events: " + "; ".join(f"{g['label']} {g['count']}x, {clock(g['seconds'])}"
                                                   for g in group_by_label(events)))
    return 0
