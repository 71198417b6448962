"""`nels check`: is every clip's media still there, and still what was indexed?"""
from __future__ import annotations

from nels.cli import print_json
from nels.library import Library


def problem_lines(in_place: dict, stored: dict | None = None) -> list[str]:
    """One line per clip whose media is missing or changed (what `nels stats` and `nels check` print)."""
    lines = [f"  clip {p['clip_id']}: MISSING {p['path']} (moved or deleted since it was ingested)"
             for p in in_place["missing"]]
    lines += [f"  clip {p['clip_id']}: CHANGED {p['path']} (not the audio that was indexed)" for p in in_place["changed"]]
    if stored:
        lines += [f"  clip {p['clip_id']}: MISSING {p['path']} (the library's own copy)" for p in stored["missing"]]
        lines += [f"  clip {p['clip_id']}: DAMAGED {p['path']} (the library's own copy)" for p in stored["changed"]]
    return lines


ADVICE = ("a moved original: 'nels ingest --in-place NEW_PATH' finds it again (same audio, same clip);"
          " a changed or deleted one: 'nels remove CLIP_ID' (the file itself is never deleted), then ingest it again")


def cli_check(args) -> int:
    """Exit 0 when every clip's media is there and unchanged (or, with --update / --forget-missing, made so),
    1 otherwise (each problem named)."""
    with Library(args.library, create=False) as lib:
        out = lib.check_media(rehash=args.hash)
        ip = out["in_place"]
        if getattr(args, "forget_missing", False) and ip["missing"]:
            gone = [p["clip_id"] for p in ip["missing"]]
            lib.remove_clips(gone)  # the catalogue's rows only: nothing outside media/ is ever deleted
            out["forgotten"], ip["missing"] = gone, []
        if getattr(args, "update", False) and ip["changed"]:
            out["updated"] = _update(lib, ip["changed"], args.json)
            ip["changed"] = [p for p in ip["changed"] if p["clip_id"] not in {u["old"] for u in out["updated"]}]
    ip, st = out["in_place"], out["stored"]
    bad = len(ip["missing"]) + len(ip["changed"]) + len(st["missing"]) + len(st["changed"])
    out["problems"] = bad
    if args.json:
        print_json(out)
        return 1 if bad else 0
    how = "SHA-256 of every file" if args.hash else "size and time, SHA-256 where they changed"
    print(f"checked {out['clips']} clip{'s' if out['clips'] != 1 else ''} ({how}): {ip['clips']} kept in place,"
          f" {st['clips']} in the library's media folder")
    for cid in out.get("forgotten", []):
        print(f"  clip {cid}: forgotten (its original is missing)")
    for u in out.get("updated", []):
        print(f"  clip {u['old']}: changed original {u['path']} "
              + (f"indexed again as clip {u['new']}" if u.get("new") else f"not indexed again: {u['error']}"))
    for line in problem_lines(ip, st):
        print(line)
    if bad:
        print(f"{bad} problem{'s' if bad != 1 else ''}; {ADVICE}")
    else:
        print("every clip's media is there and unchanged")
    return 1 if bad else 0


def _update(lib, changed: list[dict], quiet: bool) -> list[dict]:
    """Index changed originals again: each old clip (whose segments no longer describe the file) is removed from
    the catalogue and the file ingested in place as it is now. [{old, path, new clip id or None, error}]."""
    import sys

    from nels.ingest.runner import IngestOptions, ingest

    if not quiet:
        print("nels: loading models…", file=sys.stderr, flush=True)
    done = []
    for p in changed:
        lib.remove_clips([p["clip_id"]])  # the file itself stays; its crawl item becomes due again
        rep = ingest(lib, [p["path"]], options=IngestOptions(progress=False, in_place=True))
        new = rep.added[0] if rep.added else None
        if new is None and rep.duplicates:  # the file now holds audio another clip already has
            new = lib.catalogue.clip_by_hash(_hash(p["path"]))
        error = "; ".join(e for _, e in rep.failed) or None
        done.append({"old": p["clip_id"], "path": p["path"], "new": new, "error": error})
    return done


def _hash(path: str) -> str:
    from nels.store.library import content_hash

    return content_hash(path)
