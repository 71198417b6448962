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
    """Exit 0 when every clip's media is there and unchanged, 1 otherwise (each problem named)."""
    with Library(args.library, create=False) as lib:
        out = lib.check_media(rehash=args.hash)
    ip, st = out["in_place"], out["stored"]
    bad = len(ip["missing"]) + len(ip["changed"]) + len(st["missing"]) + len(st["changed"])
    out["problems"] = bad
    if args.json:
        print_json(out)
        return 1 if bad else 0
    how = "SHA-256 of every file" if args.hash else "size and time, SHA-256 where they changed"
    print(f"checked {out['clips']} clip{'s' if out['clips'] != 1 else ''} ({how}): {ip['clips']} kept in place,"
          f" {st['clips']} in the library's media folder")
    for line in problem_lines(ip, st):
        print(line)
    if bad:
        print(f"{bad} problem{'s' if bad != 1 else ''}; {ADVICE}")
    else:
        print("every clip's media is there and unchanged")
    return 1 if bad else 0
