"""CLI handlers for `nels search` and `nels tag`."""
from __future__ import annotations

import sys

from nels.cli import print_json


def cli_search(args) -> int:
    from nels.library import Library

    lib = Library(args.library, create=False)
    res = lib.search(text=args.text, audio=args.audio, mode=args.mode, k=args.k, page=args.page, start=args.start,
                     end=args.end, label=args.label, source=args.source, min_duration=args.min_duration,
                     max_duration=args.max_duration)
    if args.json:
        print_json(list(res))
        return 0
    if res.query_labels:
        print("the query sounds like: " + ", ".join(f"{l['label']} ({l['prob']:.2f})" for l in res.query_labels[:3]))
    if res.suggested_tags:
        print("tags for this sound: " + ", ".join(t["phrase"] for t in res.suggested_tags))
    if res.related_words:
        print("related sound words: " + ", ".join(t["phrase"] for t in res.related_words[:6]))
    if res.notice:
        print(f"note: {res.notice}", file=sys.stderr)
    if not res:
        print("no results")
        return 0
    print(f"{'#':>3} {'score':>6} {'clip':>6} {'start':>7} {'end':>7}  {'labels':<34} source")
    for i, r in enumerate(res, 1 + (args.page - 1) * args.k):
        labels = ", ".join(f"{l['label']} {l['prob']:.2f}" for l in r["labels"][:2])
        print(f"{i:>3} {r['score']:>6.3f} {r['clip_id']:>6} {r['start']:>7.2f} {r['end']:>7.2f}  {labels[:34]:<34}"
              f" {r['title'] or r['source']}")
        print(f"{'':>12}why: {r['explanation']}")
    return 0


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
    bar = AudioBar("tag", total=total, enabled=not args.json and sys.stderr.isatty())
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
    return 0
