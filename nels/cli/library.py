"""CLI handlers for `nels stats`, `nels remove`, `nels reindex`."""
from __future__ import annotations

import sys

from nels.cli import print_json
from nels.library import Library


def cli_stats(args) -> int:
    lib = Library(args.library, create=False)
    st = lib.stats()
    if args.json:
        print_json(st)
        return 0
    print(f"library   {st['library']}  (schema v{st['schema_version']})")
    print(f"clips     {st['clips']}  ({st['hours']:.2f} h)")
    print(f"segments  {st['segments']}")
    for space, v in st["spaces"].items():
        print(f"index     {space}: {v['vectors']} vectors ({v['model']})")
    print(f"classifier {st['classifier'] or '-'}")
    print("items     " + (", ".join(f"{k} {v}" for k, v in sorted(st["items"].items())) or "-"))
    if st["top_labels"]:
        print("top labels " + ", ".join(f"{t['label']} ({t['segments']})" for t in st["top_labels"]))
    if st["failures"]:
        print(f"failures ({len(st['failures'])} most recent):")
        for f in st["failures"]:
            print(f"  {f['uri']}: {f['error']} (attempts {f['attempts']})")
    return 0


def cli_remove(args) -> int:
    with Library(args.library, create=False) as lib:
        n = lib.remove_clips(args.clip_ids)
    if args.json:
        print_json({"removed": n})
    else:
        print(f"removed {n} clip(s)")
    return 0 if n == len(args.clip_ids) else 1


def cli_reindex(args) -> int:
    from nels.cli.ingest import _runner
    from nels.ingest.reindex import reindex

    with Library(args.library, create=False) as lib:
        out = reindex(lib, args.model, progress=not args.json and sys.stderr.isatty(), runner=_runner(args))
    if args.json:
        print_json(out)
    else:
        print(f"re-indexed {out['clips']} clips with {out['model']} ({out['failed']} failed)")
    return 0 if not out["failed"] else 1
