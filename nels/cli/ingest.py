"""`nels ingest` and `nels crawl`."""
from __future__ import annotations

import sys
from pathlib import Path

from nels.cli.output import print_json
from nels.errors import NelsError


class InputError(NelsError):
    """Nothing to ingest: every input is missing or holds no audio (found before any model loads)."""


def _print_report(rep, as_json: bool, problems: list[tuple[str, str]] = ()) -> int:
    d = rep.to_dict()
    if problems:
        d["failed"] = [{"uri": u, "error": e} for u, e in problems] + d["failed"]
    if as_json:
        print_json(d)
    else:
        parts = [f"added {d['added']} clip{'s' if d['added'] != 1 else ''}"
                 + (f" ({d['audio_seconds']:.0f} s of audio, {d['x_realtime'] or 0:.0f}x real time)" if d["added"] else "")]
        if d.get("in_place"):
            parts[0] += f", {'all' if d['in_place'] == d['added'] else d['in_place']} kept in place (not copied)"
        if d["duplicates"]:
            parts.append(f"{d['duplicates']} already in the library (the same audio)")
        if d.get("relinked"):
            parts.append(f"{d['relinked']} already in the library with a moved or changed original: referenced"
                         f" here now")
            if not d["added"]:
                parts.pop(0)  # not "added 0 clips, ..."
        if d.get("in_progress_elsewhere"):
            parts.append(f"{d['in_progress_elsewhere']} being ingested by another run")
        if d["skipped"]:
            parts.append(f"{len(d['skipped'])} skipped")
        if d["failed"]:
            parts.append(f"{len(d['failed'])} failed")
        nothing = not (d["added"] or d["duplicates"] or d.get("relinked") or d.get("in_progress_elsewhere")
                       or d["skipped"] or d["failed"])
        if nothing:
            parts.append("nothing new: everything given is already in the library")
        print(", ".join(parts))
        for s in d["skipped"]:
            print(f"  skipped {s['uri']}: {_without_uri(s['uri'], s['reason'])}")
        for f in d["failed"]:
            print(f"  FAILED  {f['uri']}: {_without_uri(f['uri'], f['error'])}", file=sys.stderr)
    return 1 if (rep.failed or problems) else 0


def _without_uri(uri: str, message: str) -> str:
    """An error that starts with the item's own path or URL, without it (the line already names it)."""
    for prefix in (uri, Path(uri).name):
        if prefix and message.startswith(prefix + ": "):
            message = message[len(prefix) + 2:]
            break
    return message.replace(f": '{uri}'", "").replace(f": {uri}", "")


def check_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """Inputs that cannot be ingested, found without loading anything: (input, why) for a missing path and
    for a folder without audio. URLs and URL lists are checked when they are fetched."""
    from nels.sources.source import AUDIO_EXTENSIONS, is_url

    bad = []
    for s in inputs:
        if is_url(s) or s.startswith(("ytsearch", "ytdl:")):
            continue
        p = Path(s).expanduser()
        if not p.exists():
            bad.append((s, "no such file or folder"))
        elif p.is_dir() and not any(f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file() for f in p.rglob("*")):
            bad.append((s, "no audio found in this folder (NELS reads "
                           + ", ".join(sorted(AUDIO_EXTENSIONS)[:8]) + ", …)"))
    return bad


def _options(args):
    from nels.ingest.runner import IngestOptions

    return IngestOptions(max_duration=args.max_duration, max_items=args.max_items, rate_limit=args.rate_limit,
                         retries=args.retries, progress=not args.json,
                         in_place=getattr(args, "in_place", False))


def _runner(args):
    """The runner the command line asks for (`--runner` and its options, see `nels.cli._runner_arguments`)."""
    from nels.ingest.runners import make_runner

    return make_runner(getattr(args, "runner", None), processes=getattr(args, "processes", None),
                       address=getattr(args, "ray_address", None),
                       cpus_per_worker=getattr(args, "ray_cpus_per_worker", 1.0))


def cli_ingest(args) -> int:
    """`nels ingest`: missing paths and folders without audio are reported before any model loads (exit 2
    when nothing is left to ingest); the rest is ingested and reported."""
    problems = check_inputs(args.inputs)
    inputs = [s for s in args.inputs if s not in {u for u, _ in problems}]
    if not inputs:
        raise InputError("; ".join(f"{u}: {why}" for u, why in problems))
    if not args.json:
        print("nels: loading models…", file=sys.stderr, flush=True)
    from nels.ingest.runner import ingest
    from nels.library import Library

    with Library(args.library) as lib:
        rep = ingest(lib, inputs, args.model, _options(args), runner=_runner(args))
    return _print_report(rep, args.json, problems)


def cli_crawl(args) -> int:
    if not args.json:
        print("nels: loading models…", file=sys.stderr, flush=True)
    from nels.ingest.runner import crawl
    from nels.library import Library

    with Library(args.library) as lib:
        rep = crawl(lib, args.queries, args.per_query, args.model, _options(args), runner=_runner(args))
    return _print_report(rep, args.json)
