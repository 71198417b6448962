"""`nels vocabulary [list|candidates]`: what the library can be searched for, and what people asked for that
it cannot (the work is in nels.search.vocabulary and the catalogue's query log).

A new action is one `add_parser` call in `add_vocabulary_parser` and one `cli_*` function here.
"""
from __future__ import annotations

import time

from nels.cli.output import print_json


def add_vocabulary_parser(sub) -> None:
    """Register `nels vocabulary` and its actions on the `nels` subparsers `sub`."""
    s = sub.add_parser("vocabulary", help="every class the library's models know, with segment counts;"
                                          " 'candidates': queries the vocabulary covered weakly")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.vocabulary:cli_list", vocabulary_command="list")
    vs = s.add_subparsers(dest="vocabulary_command", metavar="ACTION")
    v = vs.add_parser("list", help="classes per model with the number of segments each labels (the default)")
    v.add_argument("--model", default=None, help="only this model's classes (a name from the list)")
    v.add_argument("--all", action="store_true", help="also the classes that label no segment")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func="nels.cli.vocabulary:cli_list")
    v = vs.add_parser("candidates", help="text queries the vocabulary covered weakly, most asked first"
                                         " (logged by search: the classes to add next)")
    v.add_argument("--status", default="open", choices=["open", "accepted", "dismissed", "all"],
                   help="which logged queries to list (default: open)")
    v.add_argument("--limit", type=int, default=50, metavar="N", help="at most N queries (default 50)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func="nels.cli.vocabulary:cli_candidates")
    from nels.cli.run import add_accept_parser

    add_accept_parser(vs)  # `nels vocabulary accept QUERY` (nels.learn.run.accept_class)


def _library(args):
    from nels.library import Library

    return Library(args.library, create=False)


def cli_list(args) -> int:
    from nels.search.vocabulary import library_vocabulary

    lib = _library(args)
    out = library_vocabulary(lib)
    model = getattr(args, "model", None)
    if model is not None:
        known = [m["model"] for m in out["models"]]
        if model not in known:
            from nels.errors import QueryError

            raise QueryError(f"no model {model!r} in this library; its models: {', '.join(known) or 'none'}")
        out["models"] = [m for m in out["models"] if m["model"] == model]
    if args.json:
        print_json(out)
        return 0
    if not out["models"]:
        print("this library has no class probabilities (indexed without a classifier, or empty): add audio with"
              " 'nels ingest', or 'nels reindex --model default'")
        return 0
    show_all = getattr(args, "all", False)
    for m in out["models"]:
        rows = m["labels"] if show_all else [r for r in m["labels"] if r["segments"]]
        hidden = len(m["labels"]) - len(rows)
        print(f"{m['model']}: {m['classes']} classes, {m['segments']} segments")
        w = max([len(r["name"]) for r in rows] + [5])
        print(f"  {'class':<{w}}  {'segments':>8}  share")
        for r in rows:
            share = r["segments"] / m["segments"] if m["segments"] else 0.0
            print(f"  {r['name']:<{w}}  {r['segments']:>8}  {share:6.1%}")
        if hidden:
            print(f"  ... and {hidden} classes that label no segment yet ('nels vocabulary list --all' lists them)")
    print("search one with: nels search \"CLASS\"")
    return 0


def cli_candidates(args) -> int:
    from nels.errors import QueryError

    if args.limit < 1:
        raise QueryError("--limit must be at least 1")
    lib = _library(args)
    rows = lib.catalogue.weak_queries(status=None if args.status == "all" else args.status, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no {'' if args.status == 'all' else args.status + ' '}weakly covered queries logged yet"
              " (search logs a text query when no class of the library covers it)")
        return 0
    w = max(len(r["query"]) for r in rows + [{"query": "query"}])
    print(f"{'query':<{w}}  {'asked':>5}  {'coverage':>8}  {'closest class':<24} last asked")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_at"]))
        status = "" if args.status != "all" else f"  [{r['status']}]"
        print(f"{r['query']:<{w}}  {r['count']:>5}  {r['best_score']:>8.2f}  {(r['best_label'] or '-'):<24} {when}"
              f"{status}")
    return 0
