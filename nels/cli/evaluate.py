"""`nels evaluate classification|retrieval|joint|learning`: one entry point; each measurement lives in
`nels.evaluate` (or `nels.learn.experiment`), the printing here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from nels.cli.output import print_json
from nels.errors import DatasetError


def cli_evaluate(args) -> int:
    return {"classification": cli_evaluate_classification, "retrieval": cli_evaluate_retrieval,
            "joint": cli_evaluate_joint, "learning": cli_evaluate_learning}[args.what](args)


def _report(res: dict, args, filename: str) -> bool:
    """Write the report to --out (when given) and print it as JSON with --json; True when printed."""
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / filename).write_text(json.dumps(res, indent=2))
    if args.json:
        print_json(res)
    return bool(args.json)


def cli_evaluate_classification(args) -> int:
    from nels.evaluate.classification import evaluate_classification

    if not args.dataset:
        raise DatasetError("--dataset DIR is required for 'nels evaluate classification'")
    if args.format == "realworld":
        return _classification_realworld(args)
    r = evaluate_classification(args.dataset, args.format, args.fold, args.model, args.out,
                                getattr(args, "cache", None), getattr(args, "pooling", None),
                                progress=not args.json)
    if args.json:
        print_json({k: v for k, v in r.items() if k != "confusion"})
        return 0
    print(f"{r['model_name']} on {r['dataset']} ({'fold ' + str(r['fold']) if r['fold'] else 'all clips'}, "
          f"{r['n_clips']} clips, pooling {r['pooling']}): accuracy {r['accuracy']:.4f}, mAP {r['mAP']:.4f}")
    worst = sorted(((v, k) for k, v in r["per_class_ap"].items() if v is not None))[:5]
    print("lowest AP: " + ", ".join(f"{k} {v:.2f}" for v, k in worst))
    for s in r["skipped"]:
        print(s)
    if r.get("confusion_png"):
        print(f"confusion matrix: {r['confusion_png']}")
    return 0


def _classification_realworld(args) -> int:
    from nels.evaluate.realworld import evaluate_classification_realworld

    r = evaluate_classification_realworld(args.dataset, args.model, progress=not args.json and sys.stderr.isatty())
    if _report(r, args, "classification-realworld.json"):
        return 0
    for m in r.get("per_model") or [r]:
        print(f"{m['model_name']} on {r['dataset']} ({r['n_clips']} clips of {r['classes']} ESC-50 classes,"
              f" {m['how']}): top-1 {m['accuracy']:.4f}")
        if m["confusions"]:
            print("  most frequent errors: " + ", ".join(f"{k} ({n})" for k, n in m["confusions"][:5]))
    return 0


def cli_evaluate_joint(args) -> int:
    from nels.evaluate.joint import evaluate_joint

    if not args.dataset:
        raise DatasetError("nels evaluate joint needs --dataset DIR")
    res = evaluate_joint(args.dataset, args.format, args.fold, args.model, args.out,
                         progress=not args.json and sys.stderr.isatty())
    if _report(res, args, f"joint-fold{args.fold}.json"):
        return 0
    print(f"joint space {res['joint_model']} ({res['loss']}) on fold {res['fold']}")
    for k, v in res["space"].items():
        print(f"  {k:<22} MAP@3 {v['MAP@3']:.3f}  mAP {v['mAP']:.3f}")
    for name, modes in res["search"].items():
        for m, r in modes.items():
            if not isinstance(r, dict):
                continue
            print(f"  {name:<18} {m:<10} mAP {r['mAP']:.3f}  MAP@3 {r['MAP@3']:.3f}  P@10 {r['P@10']:.3f}")
    return 0


def cli_evaluate_retrieval(args) -> int:
    from nels.evaluate.retrieval import evaluate_retrieval

    if not args.dataset:
        raise DatasetError("nels evaluate retrieval needs --dataset DIR")
    if args.format == "realworld":
        return _retrieval_realworld(args)
    res = evaluate_retrieval(args.dataset, args.format, args.fold, args.model, args.out)
    if _report(res, args, f"retrieval-fold{args.fold}.json"):
        return 0
    print(f"retrieval on fold {res['fold']} ({res['clips']} clips, {res['segments']} segments), model {res['model']}")
    for name in ("text_class_names", "text_paraphrases", "text_paraphrases_independent", "audio"):
        for mode, r in res.get(name, {}).items():
            print(f"  {name:<28} {mode:<10} mAP {r['mAP']:.3f}  MAP@3 {r['MAP@3']:.3f}  P@10 {r['P@10']:.3f}"
                  f"  ({r['queries']} queries, p95 {r['latency_ms_p95']:.0f} ms)")
    return 0


def _retrieval_realworld(args) -> int:
    from nels.evaluate.realworld import evaluate_retrieval_realworld

    res = evaluate_retrieval_realworld(args.dataset, args.model, args.out)
    if _report(res, args, "retrieval-realworld.json"):
        return 0
    print(f"retrieval on {res['dataset']} ({res['clips']} clips, {res['segments']} segments, {res['esc50_clips']} clips"
          f" of {res['esc50_classes']} ESC-50 classes), model {res['spec'] or res['model']}; default modes: text"
          f" {res['default_mode']['text']}, audio {res['default_mode']['audio']}")
    for name in ("text_esc50_names", "text_paraphrases", "text_other_labels", "audio"):
        for mode, r in res[name].items():
            print(f"  {name:<17} {mode:<10} mAP {r['mAP']:.3f}  MAP@3 {r['MAP@3']:.3f}  P@10 {r['P@10']:.3f}"
                  f"  ({r['queries']} queries, p95 {r['latency_ms_p95']:.0f} ms)")
    return 0


def cli_evaluate_learning(args) -> int:
    from nels.learn.experiment import run_experiment

    if not args.dataset:
        raise DatasetError("nels evaluate learning needs --dataset DIR (ESC-50)")
    out = args.out or "bench/learning"
    summary = run_experiment(args.dataset, out, seed=getattr(args, "seed", 0) or 0,
                             progress=not args.json and sys.stderr.isatty())
    if args.json:
        print_json(summary)
    else:
        for n, s in summary.items():
            print(f"{n:<18} mAP {s['map'][0]:.4f} -> {s['map'][-1]:.4f} ({s['delta']:+.4f}), {s['selected']} selected,"
                  f" precision {s['precision']:.2f}")
        print(f"report: {out}/REPORT.md")
    return 0
