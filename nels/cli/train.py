"""`nels train` (the sound-event CNN, or with --backbone a head on a pretrained backbone) and `nels train-joint`
(the cross-modal joint space)."""
from __future__ import annotations

import json
import shlex
import sys

from nels.cli.output import print_json
from nels.errors import DatasetError


def cli_train_joint(args) -> int:
    from nels.training.joint import train_joint

    res = train_joint(args.dataset, args.format, args.exclude_fold, args.model, args.loss, args.out, args.epochs,
                      args.seed, args.vocabulary, progress=not args.json and sys.stderr.isatty(),
                      phrases=getattr(args, "phrases", None))
    if args.json:
        print_json(res)
    else:
        for ln, r in res["losses"].items():
            print(f"{ln:<20} validation {r['validation']:.3f}")
        f = res["fusion"]["text"]
        print(f"text search on validation: linguistic {f['linguistic']:.3f}, joint {f['joint']:.3f}, "
              f"fused {f['fused']:.3f} (joint weight {f['weights']['joint']}); default text mode: {f['default_mode']}")
        print(f"kept {res['loss']}/{res['text_tower']}; wrote {res['out']} ({res['train_seconds']:.0f} s)")
    return 0


def cli_train_head(args, cmd: str | None) -> int:
    from nels.training.head import train_head

    if getattr(args, "arch", None):
        raise DatasetError("--arch shapes the CNN; a head's layers are set with --hparams '{\"hidden\": [1024]}'")
    try:
        hparams = json.loads(args.hparams) if getattr(args, "hparams", None) else None
    except ValueError as exc:
        raise DatasetError(f"--hparams must be a JSON object ({exc})") from None
    if hparams is not None and not isinstance(hparams, dict):
        raise DatasetError("--hparams must be a JSON object")
    summary = train_head(args.dataset, args.format, args.exclude_fold, args.out, args.backbone, args.epochs, args.seed,
                         args.cache, hparams=hparams, command=cmd, quiet=bool(args.json),
                         progress=sys.stderr.isatty(), threads=getattr(args, "threads", None))
    if args.json:
        print_json(summary)
    else:
        m = summary["metrics"]
        line = f"head written to {summary['model']} (validation accuracy {m['validation_accuracy']}, pooling {summary['pooling']}"
        if "test" in m:
            line += f"; held-out fold {m['test_fold']}: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in m["test"].items())
        print(line + f"; {summary['train_seconds']:.0f} s)")
    return 0


def cli_train_add(args, cmd: str | None) -> int:
    """`nels train --add`: the dataset's classes beside the library's model (nels.training.addon); with --apply,
    the library is re-indexed with it at once (nothing is dropped, so nothing is asked)."""
    from nels.training.addon import train_addon

    summary = train_addon(args.library, args.dataset, args.format, args.out, getattr(args, "backbone", None),
                          args.seed, command=cmd)
    if not args.json:
        v = summary["metrics"].get("validation") or summary["metrics"]["training"]
        which = "validation" if "validation" in summary["metrics"] else "training (too few files to hold some out)"
        print(f"added {', '.join(summary['labels'])} beside the {summary['base_classes']} classes of {summary['base']}:"
              f" wrote {summary['model']}")
        print(f"  {which}: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if getattr(args, "apply", False):
        from nels.ingest.reindex import plan_reindex, reindex
        from nels.library import Library

        with Library(args.library, create=False) as lib:
            plan = plan_reindex(lib, summary["spec"])
            if plan.drops:  # cannot happen for an add-on; refuse rather than drop anything silently
                raise DatasetError(f"re-indexing with the added classes would {plan.describe()}; not applied")
            summary["reindex"] = reindex(lib, summary["spec"], progress=not args.json and sys.stderr.isatty(),
                                         plan=plan)
        if not args.json:
            r = summary["reindex"]
            print(f"re-indexed {r['clips']} clips ({r['failed']} failed): search knows "
                  f"{summary['base_classes'] + len(summary['labels'])} classes")
    elif not args.json:
        print(f"to use them: nels --library {shlex.quote(str(args.library))} reindex --model"
              f" {shlex.quote(summary['spec'])}")
    if args.json:
        print_json(summary)
    return 0


def cli_train(args) -> int:
    from nels.training.train import default_hparams, train

    argv = getattr(args, "argv", None) or []
    if getattr(args, "format", None) is None:
        args.format = "folders" if getattr(args, "add", False) else "esc50"
    if getattr(args, "add", False):
        return cli_train_add(args, "nels " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["train"] else None)
    if getattr(args, "backbone", None):
        return cli_train_head(args, "nels " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["train"] else None)

    try:
        arch = json.loads(args.arch) if getattr(args, "arch", None) else None
        hparams = json.loads(args.hparams) if getattr(args, "hparams", None) else None
    except ValueError as exc:
        raise DatasetError(f"--arch / --hparams must be JSON objects ({exc})") from None
    unknown = set(hparams or {}) - set(default_hparams())
    if unknown:
        raise DatasetError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(default_hparams())}")
    argv = getattr(args, "argv", None) or []
    cmd = "nels " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["train"] else None
    summary = train(args.dataset, args.format, args.exclude_fold, args.out, args.epochs, args.seed, args.cache,
                    arch=arch, hparams=hparams, threads=getattr(args, "threads", None), command=cmd, quiet=bool(args.json),
                    max_epochs_this_run=getattr(args, "max_epochs_this_run", None))
    if args.json:
        print_json(summary)
    else:
        print(f"{'model written to ' + summary['model'] if summary.get('model') else 'checkpoint kept in ' + summary['out']}"
              f" (best validation accuracy {summary['best_val_acc']:.3f} at epoch {summary['best_epoch']})")
    return 0
