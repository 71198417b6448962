"""`nels run` (the unattended loop), `nels status` (what it is doing) and `nels vocabulary accept` (a logged query
becomes a class). The work is in nels.learn.run."""
from __future__ import annotations

import time

from nels.cli.output import print_json


def add_run_parsers(sub) -> None:
    """Register `nels run` and `nels status` on the `nels` subparsers `sub`."""
    s = sub.add_parser("run", help="the never-ending loop, unattended: crawl, ingest, learn, gate, re-index, repeat")
    s.add_argument("--dataset", default=None, metavar="DIR",
                   help="labelled seed + held-out data (needed the first time; later runs reuse the saved options)")
    s.add_argument("--format", default="esc50", choices=["esc50", "folders"],
                   help="esc50: the ESC-50 layout (meta/esc50.csv + audio/); folders: one folder of audio per class")
    s.add_argument("--heldout-fold", type=int, default=1, metavar="K", help="ESC-50 fold kept as the held-out set")
    s.add_argument("--heldout", default=None, metavar="DIR", help="or a held-out set, a folder per class")
    s.add_argument("--strategy", default="clarity+semantic",
                   choices=["threshold", "calibrated", "clarity", "clarity+semantic"],
                   help="how crawled clips are chosen as new labels (default clarity+semantic; see the README)")
    s.add_argument("--iterations", type=int, default=2, help="selection iterations per learning step")
    s.add_argument("--cap", type=int, default=5, help="clips selected per class per iteration")
    s.add_argument("--learn-every", type=float, default=0.05, metavar="HOURS",
                   help="learn when this many hours of new audio arrived (default 0.05)")
    s.add_argument("--per-cycle", type=int, default=20, metavar="N", help="crawl results per cycle, all classes")
    s.add_argument("--per-query", type=int, default=10, metavar="N", help="at most N results per query")
    s.add_argument("--margin", type=float, default=0.05, help="the most held-out AP one class may lose (gate)")
    s.add_argument("--warm-start", action="store_true",
                   help="fine-tune the serving model's classifier head instead of re-training one from scratch")
    s.add_argument("--no-audioset-examples", dest="audioset_examples", action="store_false",
                   help="do not seed AudioSet classes with the ontology's positive-example videos (YouTube)")
    s.add_argument("--seed-urls", default=None, metavar="FILE",
                   help="a JSON file {class: [URL, ...]}: seed URLs crawled once each, from the class's budget")
    s.add_argument("--max-hours", type=float, default=None, help="stop crawling after this many hours of audio")
    s.add_argument("--max-gb", type=float, default=None, help="stop crawling when media take this many GB")
    s.add_argument("--quiet-hours", default=None, metavar="START-END", help="local hours without crawling, e.g. 22-6")
    s.add_argument("--rate", type=float, default=2.0, metavar="PER_SEC", help="requests per second per host")
    s.add_argument("--retries", type=int, default=3, help="attempts per item (exponential backoff between)")
    s.add_argument("--max-duration", type=float, default=600.0, metavar="SEC", help="skip longer media")
    s.add_argument("--allow-private", action="store_true",
                   help="crawl local/private addresses (a loopback test site); default: public addresses only")
    s.add_argument("--pause", type=float, default=60.0, metavar="SEC", help="wait between cycles")
    s.add_argument("--runner", default=None, choices=["local", "pool", "ray"], help="ingest runner")
    s.add_argument("--once", action="store_true", help="one cycle, then exit (for cron)")
    s.add_argument("--cycles", type=int, default=None, metavar="N", help="stop after N cycles")
    s.add_argument("--quiet", action="store_true", help="log to <library>/run.log only, not stdout")
    s.add_argument("--rollback", default=None, metavar="VERSION",
                   help="serve this model version again (see 'nels status'), re-indexing without downtime, and exit")
    s.set_defaults(func="nels.cli.run:cli_run")

    s = sub.add_parser("status", help="what `nels run` is doing: its step, cycles, model versions, candidates")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.run:cli_status")


def add_accept_parser(vs) -> None:
    """`nels vocabulary accept QUERY` on the vocabulary actions `vs`."""
    v = vs.add_parser("accept", help="make a logged query a new class: `nels run` crawls for it, bootstraps,"
                                     " trains and gates it")
    v.add_argument("query", help="the logged query (as 'nels vocabulary candidates' lists it)")
    v.add_argument("--name", default=None, help="the class name (default: the query)")
    v.add_argument("--also", action="append", default=[], metavar="QUERY", help="another crawl query for it")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func="nels.cli.run:cli_accept")


def _options(args):
    from nels.learn.run import RunOptions

    if args.dataset is None:
        return None
    return RunOptions(dataset=args.dataset, fmt=args.format, heldout_fold=args.heldout_fold, heldout=args.heldout,
                      strategy=args.strategy, iterations=args.iterations, cap=args.cap, learn_every=args.learn_every,
                      per_cycle=args.per_cycle, per_query_max=args.per_query, margin=args.margin,
                      max_hours=args.max_hours, max_gb=args.max_gb, quiet_hours=args.quiet_hours, rate=args.rate,
                      retries=args.retries, max_duration=args.max_duration, allow_private=args.allow_private,
                      pause=args.pause, runner=args.runner, warm_start=args.warm_start,
                      audioset_examples=args.audioset_examples, seed_urls=args.seed_urls)


def cli_run(args) -> int:
    from nels.learn import planner
    from nels.learn.run import run
    from nels.store.library import Library

    if args.quiet_hours:
        planner.parse_quiet_hours(args.quiet_hours)  # a bad value fails now, not at the first crawl
    if args.seed_urls:
        planner.read_seed_file(args.seed_urls)  # likewise
    lib = Library(args.library, create=False)
    if args.rollback:
        from nels.learn.run import rollback

        print_json(rollback(lib, args.rollback, args.runner))
        return 0
    res = run(lib, _options(args), once=args.once, cycles=args.cycles, echo=not args.quiet)
    return 0 if res["stopped_by"] in ("done", "signal") else 1


def cli_status(args) -> int:
    from nels.learn.run import status
    from nels.store.library import Library

    st = status(Library(args.library, create=False))
    if args.json:
        print_json(st)
        return 0
    now = st["now"] or {}
    if st["running"]:
        since = time.strftime("%H:%M:%S", time.localtime(now.get("since", time.time())))
        print(f"nels run (pid {st['pid']}): cycle {now.get('cycle')}, step {now.get('step')} since {since}")
    else:
        print("nels run is not running" + (f" (last: cycle {now.get('cycle')}, {now.get('step')})" if now else ""))
    print(f"library: {st['audio_hours']} h of audio, index generation {st['generation']}")
    if st["cycles"]:
        print("cycle  crawl      ingest         learn        gate")
        for c in st["cycles"][:10]:
            print(f"{c['cycle']:>5}  {c.get('crawl', '-'):<9}  +{c.get('added') or 0:<3} clips {c.get('ingest', '-'):<7}"
                  f" {c.get('learn', '-'):<8} {'' if c.get('candidate_map') is None else c['candidate_map']:<7}"
                  f" {({True: 'promoted', False: 'rejected'}).get(c.get('promoted'), c.get('gate', '-'))}")
    if st["versions"]:
        print("model versions:")
        for v in st["versions"]:
            m = "" if v["map"] is None else f"held-out mAP {v['map']:.4f}"
            print(f"  {v['name']:<40} {v['status']:<10} {m}  {v['reason'] or ''}")
    if st["new_classes"]:
        print("new classes: " + ", ".join(st["new_classes"]))
    if st["candidates"]:
        print("candidate classes (nels vocabulary accept QUERY): "
              + ", ".join(f"{c['query']} ({c['count']})" for c in st["candidates"][:10]))
    return 0


def cli_accept(args) -> int:
    from nels.learn.run import accept_class
    from nels.store.library import Library

    res = accept_class(Library(args.library, create=False), args.query, args.name, args.also)
    if args.json:
        print_json(res)
    else:
        print(f"new class {res['class']!r}: the next cycles of 'nels run' crawl for " + ", ".join(res["queries"])
              + ("" if res["was_logged"] else " (the query was not in the log)"))
    return 0
