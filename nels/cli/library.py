"""CLI handlers for `nels stats`, `nels remove`, `nels reindex`."""
from __future__ import annotations

import sys

from nels.cli import print_json
from nels.cli.ingest import _without_uri
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
    ip = st.get("in_place") or {"clips": 0, "missing": [], "changed": []}
    if ip["clips"]:
        from nels.cli.check import ADVICE, problem_lines

        bad = len(ip["missing"]) + len(ip["changed"])
        print(f"in place  {ip['clips']} clip{'s' if ip['clips'] != 1 else ''} reference files outside the library"
              + (f": {len(ip['missing'])} missing, {len(ip['changed'])} changed" if bad else ", all there"))
        for line in problem_lines(ip):
            print(line)
        if bad:
            print(f"  ({ADVICE})")
    print("items     " + (", ".join(f"{k} {v}" for k, v in sorted(st["items"].items())) or "-"))
    if st["top_labels"]:
        print("top labels " + ", ".join(f"{t['label']} ({t['segments']})" for t in st["top_labels"]))
    if st["failures"]:
        print(f"failures ({len(st['failures'])} most recent):")
        for f in st["failures"]:
            print(f"  {f['uri']}: {_without_uri(f['uri'], f['error'] or '')} (attempts {f['attempts']})")
    return 0


def cli_remove(args) -> int:
    """`nels remove ID...`: ids the library does not hold are named (and the exit status is 1)."""
    with Library(args.library, create=False) as lib:
        ids = list(dict.fromkeys(args.clip_ids))
        missing = [i for i in ids if lib.catalogue.clip(i) is None]
        n = lib.remove_clips([i for i in ids if i not in missing])
    if args.json:
        print_json({"removed": n, "missing": missing})
    else:
        print(f"removed {n} clip{'s' if n != 1 else ''}")
        if missing:
            print("nels: not in this library: " + ", ".join(f"clip {i}" for i in missing), file=sys.stderr)
    return 1 if missing else 0


def cli_reindex(args) -> int:
    from nels.cli.ingest import _runner
    from nels.ingest.progress import clock
    from nels.ingest.reindex import plan_reindex, reindex

    with Library(args.library, create=False) as lib:
        plan = plan_reindex(lib, args.model)
        if not args.json:
            what = (f"re-encoding with the library's own model '{plan.target}' ({plan.model}): only clips encoded by"
                    f" another model or other weights" if args.model is None else
                    f"re-encoding with '{plan.target}' ({plan.model})")
            print(f"{what}; {len(plan.clips)} clip(s), {clock(plan.audio_seconds)} of audio to encode",
                  file=sys.stderr)
        if not plan.clips:
            msg = (f"nothing to re-index: every clip is already encoded with '{plan.target}' ({plan.model})"
                   + ("; give --model SPEC to switch to another model" if args.model is None else ""))
            if args.json:
                print_json({"model": plan.model, "spec": plan.target, "clips": 0, "failed": 0, "audio_seconds": 0.0,
                            "note": msg})
            else:
                print(msg)
            return 0
        if plan.drops and not _confirmed(plan, getattr(args, "yes", False)):
            return 2
        out = reindex(lib, args.model, progress=not args.json, runner=_runner(args),
                      plan=plan)
    if args.json:
        print_json(out)
    else:
        skipped = len(out.get("skipped") or [])
        print(f"re-indexed {out['clips']} clips with {out['model']} ({out['failed']} failed"
              + (f", of which {skipped} kept in place with a missing or changed original: see 'nels check'"
                 if skipped else "") + ")")
    return 0 if not out["failed"] else 1


def _confirmed(plan, yes: bool) -> bool:
    """A re-index that loses classes or a vector space goes ahead only when confirmed: --yes, or 'y' typed at
    a terminal; refused (with the reason and the fix) in non-interactive use."""
    loss = plan.describe()
    if yes:
        print(f"note: this re-index {loss} (confirmed by --yes)", file=sys.stderr)
        return True
    warning = (f"warning: re-indexing with '{plan.target}' {loss}."
               + (" To keep them and add classes, train a head beside the existing ones: 'nels train --add'."
                  if plan.drop_labels else ""))
    if not sys.stdin.isatty():
        print(f"{warning}\nnels: refused without confirmation: re-run with --yes to go ahead", file=sys.stderr)
        return False
    print(warning, file=sys.stderr)
    try:
        answer = input("Go ahead? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing changed", file=sys.stderr)
        return False
    return True
