"""How the CLI prints: JSON for `--json`, and nothing else shared."""
from __future__ import annotations

import json
import sys


def _plain(o):
    """numpy scalars and arrays as numbers and lists (as the API writes them), anything else as text."""
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_plain)
    sys.stdout.write("\n")
