"""The seed question, asked of `nels run` on the loopback video site: re-train on clips chosen by acoustic
similarity only (strategy `clarity`) or by acoustic and semantic similarity (`clarity+semantic`), with the
promotion gate, over several seeds and cycles.

Setup (needs ESC-50 at ../shared/datasets/esc50; the shipped CNN was trained on folds 2-5):
  * the site serves half of ESC-50 fold 1 (clips the seed model never saw), titled with their class 70 % of the
    time (else another class), plus synthesised noise "distractors" titled as some class;
  * the held-out set is the other half of fold 1 (never crawled, never trained on); the seed is folds 2-5;
  * each (seed, strategy) is a fresh library and a fresh site (the seed draws the titles), `nels run` for
    --cycles cycles (one learning step per cycle, head-only re-training of the CNN's output layer).

Reported per run: the serving model's held-out mAP after each cycle (the gate keeps it >= the seed model's),
each candidate's mAP and the gate's decision, the precision of the selected clips (truth known from the site),
and which true classes were selected as which (drift). Writes results.json, report.md and report.png to --out.

    nice -n 10 python3 bench/run_experiment.py --seeds 0 1 2 --cycles 5 --out bench/results/run-experiment
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NELS_MODEL", "default")  # the own CNN alone (no YAMNet) in these libraries

import numpy as np  # noqa: E402

from videosite import Video, VideoSite, esc50_videos, noise_sound  # noqa: E402

ESC50 = ROOT.parent / "shared" / "datasets" / "esc50"


def half(filename: str) -> int:
    """Which half of fold 1 a clip is in: 0 served by the site, 1 held out (fixed, by a hash of its name)."""
    return hashlib.sha1(filename.encode()).digest()[0] % 2


def heldout_folder(out: Path) -> Path:
    """Fold-1 clips of the held-out half as a folder per class (symlinks)."""
    import csv

    d = out / "heldout"
    if d.exists():
        return d
    for r in csv.DictReader(open(ESC50 / "meta" / "esc50.csv")):
        if int(r["fold"]) != 1 or half(r["filename"]) != 1:
            continue
        src = next((ESC50 / "audio").glob(Path(r["filename"]).stem + ".*"))
        (d / r["category"]).mkdir(parents=True, exist_ok=True)
        os.symlink(src, d / r["category"] / src.name)
    return d


def seed_folder(out: Path, per_class: int) -> Path:
    """`per_class` clips per class of folds 2-5 (the seed model's training folds) as a folder per class
    (symlinks): a smaller labelled seed for the re-trained head, when the full 1600 clips cost too much."""
    import csv

    d = out / f"seed-{per_class}"
    if d.exists():
        return d
    taken: dict[str, int] = {}
    for r in csv.DictReader(open(ESC50 / "meta" / "esc50.csv")):
        if int(r["fold"]) == 1 or taken.get(r["category"], 0) >= per_class:
            continue
        src = next((ESC50 / "audio").glob(Path(r["filename"]).stem + ".*"))
        (d / r["category"]).mkdir(parents=True, exist_ok=True)
        os.symlink(src, d / r["category"] / src.name)
        taken[r["category"]] = taken.get(r["category"], 0) + 1
    return d


def site_videos(seed: int, distractors: int) -> list[Video]:
    vids = esc50_videos(ESC50, folds=(1,), title_accuracy=0.7, keep=lambda f: half(f) == 0, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    names = sorted({v.truth for v in vids})
    vids += [Video(f"noise-{i}", f"{rng.choice(names)} recording {i}", None, noise_sound(5.0, rng))
             for i in range(distractors)]
    return vids


def one_run(seed: int, strategy: str, cycles: int, per_cycle: int, held: Path, work: Path, distractors: int,
            seed_dir: Path | None = None, warm_start: bool = False) -> dict:
    from nels.learn.run import RunOptions, run
    from nels.store.library import Library

    site = VideoSite(site_videos(seed, distractors))
    site.start()
    os.environ["NELS_YTDLP_SEARCH"] = site.search_template
    lib = Library(work / f"lib-{seed}-{strategy.replace('+', '-')}{'-warm' if warm_start else ''}")
    t0, c0 = time.time(), time.process_time()
    try:
        run(lib, RunOptions(dataset=str(seed_dir or ESC50), fmt="folders" if seed_dir else "esc50", heldout=str(held), heldout_fold=1, strategy=strategy,
                            iterations=1, cap=5, learn_every=0.0, per_cycle=per_cycle, per_query_max=5, rate=100.0,
                            allow_private=True, pause=0.0, warm_start=warm_start), cycles=cycles, echo=False,
            install_signals=False)
        return collect(lib, site, seed, strategy, time.time() - t0, time.process_time() - c0)
    finally:
        site.stop()
        lib.close()


def collect(lib, site: VideoSite, seed: int, strategy: str, wall: float, cpu: float) -> dict:
    cat = lib.catalogue
    versions = cat.model_versions()
    seed_v = next(v for v in versions if v["cycle"] == 0)
    # the serving model after each cycle: the newest version promoted at or before it
    serving_after, cur = [], seed_v
    cands = sorted((v for v in versions if v["cycle"]), key=lambda v: v["cycle"])
    for v in cands:
        if v["status"] in ("serving", "retired"):
            cur = v
        serving_after.append(cur["map"])
    # selections: pool index -> class, pool = clips in id order at that cycle (ids only grow)
    clips = cat.clips(("id", "source_uri"))
    truth = []
    for r in clips:
        vid = Path((r[1] or "").split("?")[0]).stem
        v = site.videos.get(vid)
        truth.append(None if v is None else (v.truth or "<distractor>"))
    labels_norm = lambda s: s.replace("_", " ")  # noqa: E731
    per_cycle_precision, confusion = [], Counter()
    for it in cat.iterations():
        if not it["run"].startswith("run-c") or it["iteration"] == 0:
            continue
        sel = (it["selected"] or {}).get("selected", {})
        labels = json.loads((Path(lib.path) / "models" / it["run"] / "model.json").read_text())["labels"] \
            if (Path(lib.path) / "models" / it["run"] / "model.json").exists() else None
        if not sel or labels is None:
            per_cycle_precision.append(None)
            continue
        ok = []
        for idx, k in sel.items():
            t = truth[int(idx)] if int(idx) < len(truth) else None
            if t is None:
                continue
            chosen = labels_norm(labels[int(k)])
            ok.append(t == chosen)
            if t != chosen:
                confusion[(t, chosen)] += 1
        per_cycle_precision.append(round(float(np.mean(ok)), 3) if ok else None)
    seed_only = [it["map"] for it in cat.iterations() if it["run"].startswith("run-c") and it["iteration"] == 0]
    return {"seed": seed, "strategy": strategy, "seed_model_map": seed_v["map"],
            "seed_only_head_map": seed_only[0] if seed_only else None,
            "candidates": [{"cycle": v["cycle"], "map": v["map"], "status": v["status"], "reason": v["reason"]}
                           for v in cands],
            "serving_map_after_cycle": serving_after, "precision_per_cycle": per_cycle_precision,
            "drift": [{"true": a, "selected_as": b, "n": n} for (a, b), n in confusion.most_common(8)],
            "clips": len(clips), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def report(rows: list[dict], out: Path, cmd: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# `nels run` on the loopback site: acoustic vs acoustic+semantic selection, with the gate", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "CPU: Intel Xeon, family 6 model 167, 2 cores (shared with other jobs), `nice -n 10`", "",
             "| strategy | seeds | seed model mAP | serving mAP after last cycle (mean ± sd) | change | best candidate "
             "| promoted / rejected | selected precision (mean) |", "|---|---|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for strategy in sorted({r["strategy"] for r in rows}):
        rs = [r for r in rows if r["strategy"] == strategy]
        base = np.array([r["seed_model_map"] for r in rs], float)
        last = np.array([r["serving_map_after_cycle"][-1] if r["serving_map_after_cycle"] else r["seed_model_map"]
                         for r in rs], float)
        best = np.array([max([c["map"] for c in r["candidates"] if c["map"] is not None] or [np.nan]) for r in rs])
        prom = sum(c["status"] in ("serving", "retired") for r in rs for c in r["candidates"])
        rej = sum(c["status"] == "rejected" for r in rs for c in r["candidates"])
        prec = [p for r in rs for p in r["precision_per_cycle"] if p is not None]
        d = last - base
        lines.append(f"| {strategy} | {len(rs)} | {base.mean():.4f} | {last.mean():.4f} ± {last.std():.4f} | "
                     f"{100 * d.mean():+.2f} ± {100 * d.std():.2f} pts | {np.nanmean(best):.4f} | {prom} / {rej} | "
                     f"{np.mean(prec):.3f} |" if prec else
                     f"| {strategy} | {len(rs)} | {base.mean():.4f} | {last.mean():.4f} ± {last.std():.4f} | "
                     f"{100 * d.mean():+.2f} ± {100 * d.std():.2f} pts | {np.nanmean(best):.4f} | {prom} / {rej} | — |")
        n = max(len(r["serving_map_after_cycle"]) for r in rs)
        curves = np.array([[r["seed_model_map"]] + r["serving_map_after_cycle"] + [r["serving_map_after_cycle"][-1]]
                           * (n - len(r["serving_map_after_cycle"])) for r in rs if r["serving_map_after_cycle"]])
        if len(curves):
            m, s = curves.mean(0), curves.std(0)
            line, = ax.plot(range(len(m)), m, marker="o", label=f"{strategy}: serving")
            ax.fill_between(range(len(m)), m - s, m + s, alpha=0.2)
            cand = np.array([[np.nan if c["map"] is None else c["map"] for c in r["candidates"]] for r in rs
                             if len(r["candidates"]) == len(rs[0]["candidates"])], float)
            if cand.size:
                ax.plot(range(1, cand.shape[1] + 1), np.nanmean(cand, 0), marker="x", ls="--", color=line.get_color(),
                        label=f"{strategy}: candidate (gated)")
    ax.set_xlabel("cycle (0: the seed model)")
    ax.set_ylabel("held-out mAP of the serving model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "report.png")
    plt.close(fig)
    lines += ["", "Per run: candidates (cycle: mAP, gate), the most frequent drifts (true class -> selected as).", ""]
    for r in rows:
        cands = ", ".join(f"c{c['cycle']}: {c['map']:.4f} {'promoted' if c['status'] in ('serving', 'retired') else c['status']}"
                          for c in r["candidates"] if c["map"] is not None)
        drift = "; ".join(f"{d['true']} -> {d['selected_as']} ({d['n']})" for d in r["drift"][:4]) or "none"
        lines.append(f"- seed {r['seed']}, {r['strategy']}: seed model {r['seed_model_map']:.4f}, seed-only re-trained"
                     f" head {r['seed_only_head_map'] or float('nan'):.4f}; {cands}; precision per cycle "
                     f"{r['precision_per_cycle']}; drift: {drift}; {r['clips']} clips, {r['wall_s']} s wall,"
                     f" {r['cpu_s']} s CPU")
    lines += ["", "![serving mAP per cycle](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=["clarity", "clarity+semantic"])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--per-cycle", type=int, default=50, help="crawl results per cycle (all classes)")
    ap.add_argument("--distractors", type=int, default=20)
    ap.add_argument("--warm-start", action="store_true", help="fine-tune the serving head (nels run --warm-start)")
    ap.add_argument("--seed-per-class", type=int, default=None, metavar="N",
                    help="re-train the head from N clips per class of folds 2-5 (default: all 1600)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "run-experiment"))
    ap.add_argument("--work", default=None, help="where the libraries go (default: a temp folder)")
    ap.add_argument("--report-only", action="store_true", help="rewrite report.md/png from --out's results.json")
    a = ap.parse_args()
    if a.report_only:
        out = Path(a.out)
        old = (out / "report.md").read_text().split("Command: `")[1].split("`")[0] if (out / "report.md").exists() else ""
        report(json.loads((out / "results.json").read_text()), out, old)
        return
    if not (ESC50 / "meta" / "esc50.csv").exists():
        sys.exit(f"ESC-50 not found at {ESC50}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="nels-run-exp-"))
    held = heldout_folder(work)
    res_file = out / "results.json"
    rows = json.loads(res_file.read_text()) if res_file.exists() else []
    cmd = "nice -n 10 python3 bench/run_experiment.py " + " ".join(sys.argv[1:])
    for seed in a.seeds:
        for strategy in a.strategies:
            if any(r["seed"] == seed and r["strategy"] == strategy for r in rows):
                continue  # done by an earlier (interrupted) invocation
            r = one_run(seed, strategy, a.cycles, a.per_cycle, held, work, a.distractors,
                        seed_folder(work, a.seed_per_class) if a.seed_per_class else None, a.warm_start)
            rows.append(r)
            res_file.write_text(json.dumps(rows, indent=1) + "\n")
            report(rows, out, cmd)
            print(json.dumps({k: r[k] for k in ("seed", "strategy", "seed_model_map", "serving_map_after_cycle",
                                                "precision_per_cycle", "wall_s")}), flush=True)


if __name__ == "__main__":
    main()
