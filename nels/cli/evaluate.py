"""`nels evaluate WHAT`: one entry point, each measurement lives beside what it measures."""
from __future__ import annotations

_TARGETS = {
    "classification": "nels.evaluate.classification:cli_evaluate_classification",
    "retrieval": "nels.evaluate.retrieval:cli_evaluate_retrieval",
    "joint": "nels.evaluate.joint:cli_evaluate_joint",
    "learning": "nels.learn.experiment:cli_evaluate_learning",
}


def cli_evaluate(args) -> int:
    from nels.cli import _resolve
    from nels.errors import NelsError

    try:
        fn = _resolve(_TARGETS[args.what])
    except (ImportError, AttributeError):
        raise NelsError(f"'nels evaluate {args.what}' is not available in this version") from None
    return fn(args)
