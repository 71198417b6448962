"""CLI handlers for `nels models fetch|add|list` (the work is in nels.encoders.installed)."""
from __future__ import annotations

import sys

from nels.cli import print_json
from nels.encoders import installed


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def cli_fetch(args) -> int:
    out = installed.fetch(args.name, url=args.url, progress=not args.json, force=args.force)
    if args.json:
        print_json(out)
    elif out.get("downloaded"):
        print(f"installed {args.name}: {out['path']} ({_mb(out['size'])}, SHA-256 checked; licence {out['licence']})")
    else:
        print(f"{args.name} is already installed: {out['path']} (SHA-256 checked; --force to download again)")
    return 0


def cli_add(args) -> int:
    out = installed.add(args.name, args.path)
    if args.json:
        print_json(out)
    else:
        print(f"installed {args.name}: {out['path']} (copied from {out['source']}, SHA-256 checked;"
              f" licence {out['licence']})")
    return 0


def cli_list(args) -> int:
    rows = installed.list_models()
    if args.json:
        print_json(rows)
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  {'kind':<10} {'status':<9} {'size':>8} {'classes':>7}  licence")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['kind']:<10} {r['status']:<9} {_mb(r['size']):>8} {r['classes'] or '-':>7}"
              f"  {r['licence']}")
        if r["path"]:
            print(f"{'':<{w}}  {r['path']}" + ("  (a development copy)" if r["status"] == "shared" else ""))
    missing = [r["name"] for r in rows if r["status"] in ("missing", "corrupt")]
    if missing:
        print(f"get them with: {'; '.join('nels models fetch ' + n for n in missing)}", file=sys.stderr)
    print(f"models folder: {installed.models_dir()}  (NELS_MODELS)")
    return 0
