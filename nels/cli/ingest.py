"""`nels ingest` and `nels crawl`."""
from __future__ import annotations

import sys

from nels.cli.output import print_json
from nels.ingest.runner import IngestOptions, IngestReport, crawl, ingest
from nels.ingest.runners import make_runner
from nels.library import Library


def _print_report(rep: IngestReport, as_json: bool) -> int:
    d = rep.to_dict()
    if as_json:
        print_json(d)
    else:
        print(f"added {d['added']} clips ({d['audio_seconds']:.0f} s of audio, {d['x_realtime'] or 0:.0f}x real time),"
              f" {d['duplicates']} duplicates, {len(d['skipped'])} skipped, {len(d['failed'])} failed")
        for s in d["skipped"]:
            print(f"  skipped {s['uri']}: {s['reason']}")
        for f in d["failed"]:
            print(f"  FAILED  {f['uri']}: {f['error']}", file=sys.stderr)
    return 1 if rep.failed else 0


def _options(args) -> IngestOptions:
    return IngestOptions(max_duration=args.max_duration, max_items=args.max_items, rate_limit=args.rate_limit,
                         retries=args.retries, progress=not args.json and sys.stderr.isatty())


def _runner(args):
    """The runner the command line asks for (`--runner` and its options, see `nels.cli._runner_arguments`)."""
    return make_runner(getattr(args, "runner", None), processes=getattr(args, "processes", None),
                       address=getattr(args, "ray_address", None),
                       cpus_per_worker=getattr(args, "ray_cpus_per_worker", 1.0))


def cli_ingest(args) -> int:
    with Library(args.library) as lib:
        rep = ingest(lib, args.inputs, args.model, _options(args), runner=_runner(args))
    return _print_report(rep, args.json)


def cli_crawl(args) -> int:
    with Library(args.library) as lib:
        rep = crawl(lib, args.queries, args.per_query, args.model, _options(args), runner=_runner(args))
    return _print_report(rep, args.json)
