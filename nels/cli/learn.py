"""`nels learn`."""
from __future__ import annotations

import sys

from nels.cli.output import print_json
from nels.errors import NelsError
from nels.learn.library import learn
from nels.library import Library


def cli_learn(args) -> int:
    if (args.add_class is None) != (args.query is None):
        raise NelsError("--add-class and --query go together")
    lib = Library(args.library, create=False)
    res = learn(lib, args.dataset, args.format, args.test_fold, args.strategy, args.iterations, args.cap,
                args.patience, args.run, [(args.add_class, args.query)] if args.add_class else [], args.per_query,
                args.apply, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print_json(res)
    else:
        print(f"run {res['run']} ({res['strategy']}): mAP " + " -> ".join(f"{m:.4f}" for m in res["map"]))
        print(f"new model: {res['model']}" + ("" if args.apply else "  (apply: nels reindex --model PATH)"))
    return 0
