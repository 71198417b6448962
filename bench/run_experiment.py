"""The seed question, asked of `nels run` on the loopback video site: re-train on clips chosen by acoustic
similarity only (strategy `clarity`) or by acoustic and semantic similarity (`clarity+semantic`), with the
promotion gate, over several seeds and cycles.

Setup (needs ESC-50 at ../shared/datasets/esc50; the shipped CNN was trained on folds 2-5):
  * the site serves half of ESC-50 fold 1 (clips the shipped CNN never saw), titled with their class 70 % of the
    time (else another class), plus synthesised noise "distractors" titled as some class;
  * the held-out set is the other half of fold 1 (never crawled, never trained on);
  * --design seedhead (default): the served seed model is the shipped CNN's layers with an output layer trained on
    --seed-per-class N clips per class of folds 2-5 (default 8, a random draw per seed), and that seed set is the
    labelled data candidates are re-trained on; --design shipped: the shipped CNN itself is served (its output
    layer trained on all of folds 2-5; the seed is folds 2-5, or --seed-per-class N of them);
  * each (seed, strategy) is a fresh library and a fresh site (the seed draws the titles, distractors and seed
    set), `nels run` for --cycles cycles (one learning step per cycle, head-only: from scratch, or --warm-start).

Reported per run: the serving model's held-out mAP after each cycle (the gate keeps it >= the seed model's),
each candidate's mAP, per-class AP and the gate's decision, the precision of the selected clips (truth known from
the site), and which true classes were selected as which (drift). Each finished run is a file in --out/runs/
(invocations on other seeds may share --out; an interrupted one resumes its library); results.json, summary.json,
report.md and report.png gather them.

    nice -n 10 python3 bench/run_experiment.py --design seedhead --seeds 0 1 2 3 4 --cycles 5 --per-cycle 150 \
        --per-query-max 10 --iterations 2 [--warm-start] [--margin 0.25] --out bench/results/run-experiment/seedhead-cold
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NELS_MODEL", "default")  # the own CNN alone (no YAMNet) in these libraries
# before numpy loads (nels sets it too, but videosite imports numpy first): a 2-thread OpenBLAS on 2 busy cores
# spends ~15x the CPU time of one thread on the head's matrix products (the > 40 min learning steps of before)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
    tmp = out / f".heldout.{os.getpid()}.tmp"
    for r in csv.DictReader(open(ESC50 / "meta" / "esc50.csv")):
        if int(r["fold"]) != 1 or half(r["filename"]) != 1:
            continue
        src = next((ESC50 / "audio").glob(Path(r["filename"]).stem + ".*"))
        (tmp / r["category"]).mkdir(parents=True, exist_ok=True)
        os.symlink(src, tmp / r["category"] / src.name)
    try:
        os.replace(tmp, d)
    except OSError:  # another invocation made it first
        import shutil

        shutil.rmtree(tmp)
    return d


def seed_folder(out: Path, per_class: int, seed: int | None = None) -> Path:
    """`per_class` clips per class of folds 2-5 (the shipped CNN's training folds) as a folder per class
    (symlinks): the first ones in the metadata's order (seed None), or a random draw with `seed`."""
    import csv

    d = out / (f"seed-{per_class}" if seed is None else f"seed-{per_class}-s{seed}")
    if d.exists():
        return d
    rows = [r for r in csv.DictReader(open(ESC50 / "meta" / "esc50.csv")) if int(r["fold"]) != 1]
    if seed is not None:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    tmp = out / f".{d.name}.{os.getpid()}.tmp"
    taken: dict[str, int] = {}
    for r in rows:
        if taken.get(r["category"], 0) >= per_class:
            continue
        src = next((ESC50 / "audio").glob(Path(r["filename"]).stem + ".*"))
        (tmp / r["category"]).mkdir(parents=True, exist_ok=True)
        os.symlink(src, tmp / r["category"] / src.name)
        taken[r["category"]] = taken.get(r["category"], 0) + 1
    os.replace(tmp, d)
    return d


def seed_model(out: Path, seed_dir: Path) -> Path:
    """The served seed model of the `seedhead` design: the shipped CNN's layers with an output layer trained on
    the seed set alone (the same head training `nels run` re-trains candidates with, seed 0)."""
    from nels.audio.decode import decode
    from nels.encoders.base import create_encoder
    from nels.learn.embed import embed_files
    from nels.learn.heads import save_with_head
    from nels.learn.loop import train_head
    from nels.learn.run import load_head
    from nels.training.datasets import load_dataset

    d = out / f"model-{seed_dir.name}"
    if (d / "model.json").exists():
        return d
    base = ROOT / "nels" / "data" / "models" / "esc50-cnn"
    labels = load_head(base)[2]
    ds = load_dataset(seed_dir, "folders")
    enc = create_encoder(str(base))
    X, clip = embed_files(enc, [str(it.path) for it in ds.items], decode)
    y = np.array([labels.index(ds.labels[it.label]) for it in ds.items])
    W, b = train_head(X, y[clip], len(labels), seed=0)
    return save_with_head(base, d, W, b, labels, f"esc50-cnn-{seed_dir.name}",
                          {"seed_model": {"seed_set": str(seed_dir), "clips": len(ds.items),
                                          "note": "run_experiment.py --design seedhead: the shipped CNN's layers,"
                                                  " output layer trained on the seed set only"}})


def site_videos(seed: int, distractors: int) -> list[Video]:
    vids = esc50_videos(ESC50, folds=(1,), title_accuracy=0.7, keep=lambda f: half(f) == 0, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    names = sorted({v.truth for v in vids})
    vids += [Video(f"noise-{i}", f"{rng.choice(names)} recording {i}", None, noise_sound(5.0, rng))
             for i in range(distractors)]
    return vids


def one_run(seed: int, strategy: str, cycles: int, per_cycle: int, held: Path, work: Path, distractors: int,
            seed_dir: Path | None = None, warm_start: bool = False, model: Path | None = None,
            iterations: int = 1, per_query_max: int = 5, tag: str = "", margin: float = 0.05) -> dict:
    """One `nels run` of `cycles` cycles on a fresh library (or the rest of them, on the library an interrupted
    invocation left). model: the library's (served seed) model; None: the shipped CNN."""
    from nels.encoders.base import create_encoder
    from nels.encoders.selection import record_model
    from nels.learn.run import RunOptions, run
    from nels.store.library import Library

    site = VideoSite(site_videos(seed, distractors))
    site.start()
    os.environ["NELS_YTDLP_SEARCH"] = site.search_template
    lib = Library(work / f"lib{tag}-{seed}-{strategy.replace('+', '-')}{'-warm' if warm_start else ''}")
    if model is not None and lib.get_meta("model") is None:
        record_model(lib, str(model), create_encoder(str(model)))
    t0, c0 = time.time(), time.process_time()
    try:
        offline = {"audioset_examples": False} if "audioset_examples" in RunOptions.__dataclass_fields__ else {}
        left = cycles - (int(lib.get_meta("run.cycle") or 1) - 1)
        if left > 0:
            run(lib, RunOptions(dataset=str(seed_dir or ESC50), fmt="folders" if seed_dir else "esc50",
                                heldout=str(held), heldout_fold=1, strategy=strategy, iterations=iterations, cap=5,
                                learn_every=0.0, per_cycle=per_cycle, per_query_max=per_query_max, rate=100.0,
                                allow_private=True, pause=0.0, warm_start=warm_start, margin=margin, **offline),
                cycles=left, echo=False, install_signals=False)
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
    by_cycle: dict[str, list[bool]] = {}
    confusion = Counter()
    for it in cat.iterations():
        if not it["run"].startswith("run-c") or it["iteration"] == 0:
            continue
        ok = by_cycle.setdefault(it["run"], [])
        sel = (it["selected"] or {}).get("selected", {})
        mj = Path(lib.path) / "models" / it["run"] / "model.json"
        labels = json.loads(mj.read_text())["labels"] if mj.exists() else None
        if not sel or labels is None:
            continue
        for idx, k in sel.items():
            t = truth[int(idx)] if int(idx) < len(truth) else None
            if t is None:
                continue
            chosen = labels_norm(labels[int(k)])
            ok.append(t == chosen)
            if t != chosen:
                confusion[(t, chosen)] += 1
    order = sorted(by_cycle, key=lambda run: int(run[len("run-c"):]))
    per_cycle_precision = [round(float(np.mean(by_cycle[c])), 3) if by_cycle[c] else None for c in order]
    selected_per_cycle = [len(by_cycle[c]) for c in order]
    seed_only = [it["map"] for it in cat.iterations() if it["run"].startswith("run-c") and it["iteration"] == 0]
    return {"seed": seed, "strategy": strategy, "seed_model_map": seed_v["map"],
            "seed_only_head_map": seed_only[0] if seed_only else None,
            "seed_per_class": seed_v["per_class"],
            "candidates": [{"cycle": v["cycle"], "map": v["map"], "status": v["status"], "reason": v["reason"],
                            "per_class": v["per_class"]} for v in cands],
            "serving_map_after_cycle": serving_after, "precision_per_cycle": per_cycle_precision,
            "selected_per_cycle": selected_per_cycle, "selected_total": sum(selected_per_cycle),
            "drift": [{"true": a, "selected_as": b, "n": n} for (a, b), n in confusion.most_common(20)],
            "clips": len(clips), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def _ms(x, scale: float = 1.0, fmt: str = "{:+.2f}") -> str:
    """'mean ± sd' of x (times scale), '—' when empty."""
    x = np.asarray([v for v in x if v is not None and not np.isnan(v)], float) * scale
    return "—" if not x.size else (fmt + " ± " + fmt.replace("+", "")).format(x.mean(), x.std())


def summary(rows: list[dict]) -> dict:
    """Per strategy: the figures the report's table and verdict are made of (mAP changes in points)."""
    out = {}
    for strategy in sorted({r["strategy"] for r in rows}):
        rs = [r for r in rows if r["strategy"] == strategy]
        base = np.array([r["seed_model_map"] for r in rs], float)
        serving = [[r["seed_model_map"]] + r["serving_map_after_cycle"] for r in rs]
        last = np.array([s[-1] for s in serving], float)
        lowest = np.array([min(s) for s in serving], float)
        cand = [[c["map"] - r["seed_model_map"] for c in r["candidates"] if c["map"] is not None] for r in rs]
        drift = Counter()
        for r in rs:
            for d in r["drift"]:
                drift[(d["true"], d["selected_as"])] += d["n"]
        out[strategy] = {
            "runs": len(rs), "seeds": sorted({r["seed"] for r in rs}),
            "seed_model_map": [float(v) for v in base],
            "serving_change_pts": [round(100 * float(v), 2) for v in last - base],
            "lowest_serving_change_pts": [round(100 * float(v), 2) for v in lowest - base],
            "last_candidate_change_pts": [round(100 * c[-1], 2) if c else None for c in cand],
            "all_candidate_changes_pts": [round(100 * v, 2) for c in cand for v in c],
            "best_candidate_change_pts": [round(100 * max(c), 2) if c else None for c in cand],
            "promoted": sum(c["status"] in ("serving", "retired") for r in rs for c in r["candidates"]),
            "rejected": sum(c["status"] == "rejected" for r in rs for c in r["candidates"]),
            "precision": [p for r in rs for p in r["precision_per_cycle"] if p is not None],
            "selected": [r.get("selected_total") for r in rs],
            "drift": [[a, b, n] for (a, b), n in drift.most_common(10)],
        }
        mean_only = [regate(r, 1.0) for r in rs]
        if all(m is not None for m in mean_only):
            out[strategy]["serving_change_pts_mean_only_gate"] = [
                round(100 * (m[-1] - r["seed_model_map"]), 2) if m else 0.0 for m, r in zip(mean_only, rs)]
    return out


def regate(r: dict, margin: float) -> list[float] | None:
    """The served mAP after each cycle had the gate used `margin` (1.0: the mean alone), replayed on the recorded
    candidates (nels.learn.gate.decide on their per-class held-out AP). Exact for heads re-trained from scratch up
    to the planner (whose budget follows the served model's AP); None without recorded per-class AP."""
    from nels.learn.gate import decide

    if not r.get("seed_per_class") or any(not c.get("per_class") for c in r["candidates"]):
        return None
    cur, out = r["seed_per_class"], []
    for c in r["candidates"]:
        if decide(c["per_class"], cur, margin).promote:
            cur = c["per_class"]
        out.append(float(np.mean([v for v in cur.values() if v is not None])))
    return out


def report(rows: list[dict], out: Path, cmd: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    design = rows[0].get("design", "shipped")
    warm = rows[0].get("warm_start", False)
    about = {"seedhead": "served seed model = the shipped CNN's layers with an output layer trained on the labelled"
                         " seed set alone (a random draw of"
                         f" {str(rows[0].get('seed_set', 'seed-N')).split('-')[1]} clips per class of folds 2-5 per seed,"
                         f" `{rows[0].get('seed_set', '?')}` for seed {rows[0]['seed']})",
             "shipped": "served seed model = the shipped CNN itself (output layer trained on all of folds 2-5)"}[design]
    head = ("fine-tuned from the serving head (`--warm-start`)" if warm else "re-trained from scratch on the seed set +"
            " the selected clips")
    S = summary(rows)
    lines = ["# `nels run` on the loopback site: acoustic vs acoustic+semantic selection, with the gate", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "CPU: Intel Xeon, family 6 model 167, 2 cores, AVX512-BF16/AMX (shared with other jobs), `nice -n 10`", "",
             f"Design `{design}`: {about}; candidate heads {head}; the gate's per-class margin"
             f" {rows[0].get('margin', 0.05)} (`nels run --margin`; 0.05 the default). The site serves one half of ESC-50 fold 1 (titles"
             " right 70 % of the time) plus noise distractors; the held-out set is the other half of fold 1 (never"
             " crawled, never trained on). Changes are in mAP points against the seed model, mean ± sd over seeds.", "",
             "| strategy | runs | seed model mAP | served model after the last cycle | lowest served (any cycle) "
             "| candidates (every cycle) | last candidate | promoted / rejected | precision of selected clips |",
             "|---|---|---|---|---|---|---|---|---|"]
    for strategy, m in S.items():
        lines.append(f"| {strategy} | {m['runs']} | {_ms(m['seed_model_map'], 1, '{:.4f}')} | "
                     f"{_ms(m['serving_change_pts'])} | {min(m['lowest_serving_change_pts']):+.2f} (min) | "
                     f"{_ms(m['all_candidate_changes_pts'])} | {_ms(m['last_candidate_change_pts'])} | "
                     f"{m['promoted']} / {m['rejected']} | {_ms(m['precision'], 1, '{:.3f}')} |")
    best = max(S, key=lambda k: np.mean(S[k]["serving_change_pts"]))
    never = all(v >= -1e-9 for m in S.values() for v in m["lowest_serving_change_pts"])
    gain = float(np.mean(S[best]["serving_change_pts"]))
    if {"clarity", "clarity+semantic"} <= set(S):  # paired by seed: same seed set, seed model and site
        by = {(r["strategy"], r["seed"]): np.mean([c["map"] for c in r["candidates"] if c["map"] is not None])
              for r in rows}
        common = sorted({sd for st, sd in by if st == "clarity"} & {sd for st, sd in by if st == "clarity+semantic"})
        if common:
            d = np.array([100 * (by[("clarity+semantic", sd)] - by[("clarity", sd)]) for sd in common])
            lines += ["", f"Paired by seed (same seed set, seed model and site): clarity+semantic minus clarity, mean"
                      f" candidate mAP over the cycles: {d.mean():+.2f} ± {d.std():.2f} points; higher in"
                      f" {int((d > 0).sum())} of {len(d)} seeds ({', '.join(f'{x:+.2f}' for x in d)})."]
    if not warm and all("serving_change_pts_mean_only_gate" in m for m in S.values()):  # warm: no replay (each
        # candidate was fine-tuned from the head serving then, which another gate would have changed)
        lines += ["", "Replayed on the recorded candidates, a gate on the mean alone (no per-class margin; held-out"
                  " classes have ~4 clips here, so one clip moves a class's AP by 0.1-0.2) would serve: "
                  + "; ".join(f"{k} {_ms(m['serving_change_pts_mean_only_gate'])} points" for k, m in S.items())
                  + " (a replay: exact for heads trained from scratch, up to the planner's budget)."]
    lines += ["", f"- With the gate, the served mAP {'never dropped' if never else 'DROPPED'} below the seed model's"
              f" (lowest: {min(min(m['lowest_serving_change_pts']) for m in S.values()):+.2f} points).",
              f"- Best strategy: **{best}**, {gain:+.2f} points (target +1.4: **{'met' if gain >= 1.4 else 'not met'}**)."
              " The served figure is measured on the same held-out set the gate decided on, so it is biased upward"
              " (the gate keeps the lucky candidates); the candidates' change (every cycle, ungated) is the unbiased"
              " measure of what each strategy learns.", "",
              "Drift (true class -> selected as, clips over all seeds and cycles):", ""]
    for strategy, m in S.items():
        lines.append(f"- {strategy}: " + ("; ".join(f"{a} -> {b} ({n})" for a, b, n in m["drift"]) or "none"))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for strategy in S:
        rs = [r for r in rows if r["strategy"] == strategy]
        n = max(len(r["serving_map_after_cycle"]) for r in rs)
        curves = np.array([[0.0] + [100 * (v - r["seed_model_map"]) for v in r["serving_map_after_cycle"]]
                           + [100 * (r["serving_map_after_cycle"][-1] - r["seed_model_map"])]
                           * (n - len(r["serving_map_after_cycle"])) for r in rs if r["serving_map_after_cycle"]])
        if len(curves):
            mu, sd = curves.mean(0), curves.std(0)
            line, = ax.plot(range(len(mu)), mu, marker="o", label=f"{strategy}: served")
            ax.fill_between(range(len(mu)), mu - sd, mu + sd, alpha=0.2)
            cand = np.array([[np.nan if c["map"] is None else 100 * (c["map"] - r["seed_model_map"])
                              for c in r["candidates"]] for r in rs if len(r["candidates"]) == n], float)
            if cand.size:
                ax.plot(range(1, cand.shape[1] + 1), np.nanmean(cand, 0), marker="x", ls="--", color=line.get_color(),
                        label=f"{strategy}: candidate (before the gate)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(1.4, color="grey", lw=0.8, ls=":", label="+1.4 (target)")
    ax.set_xlabel("cycle (0: the seed model)")
    ax.set_ylabel("held-out mAP change (points)")
    ax.set_title(f"{design}, {'warm start' if warm else 'head from scratch'}: mean ± sd over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "report.png")
    plt.close(fig)
    lines += ["", "Per run: candidates (cycle: mAP, gate), precision of the selected clips per cycle, the most"
              " frequent drifts (true class -> selected as).", ""]
    for r in sorted(rows, key=lambda r: (r["strategy"], r["seed"])):
        cands = ", ".join(f"c{c['cycle']}: {c['map']:.4f} {'promoted' if c['status'] in ('serving', 'retired') else c['status']}"
                          for c in r["candidates"] if c["map"] is not None)
        drift = "; ".join(f"{d['true']} -> {d['selected_as']} ({d['n']})" for d in r["drift"][:4]) or "none"
        lines.append(f"- seed {r['seed']}, {r['strategy']}: seed model {r['seed_model_map']:.4f}; {cands}; precision"
                     f" per cycle {r['precision_per_cycle']}; selected {r.get('selected_total', '?')}; drift: {drift};"
                     f" {r['clips']} clips, {r['wall_s']} s wall, {r['cpu_s']} s CPU")
    lines += ["", "![served and candidate mAP change per cycle](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(S, indent=1) + "\n")


def gather(out: Path) -> list[dict]:
    """Every finished run under out/runs/ (one JSON file each: parallel invocations on other seeds share --out)."""
    return [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--design", choices=("seedhead", "shipped"), default="seedhead",
                    help="seedhead: the served seed model is the shipped CNN's layers with an output layer trained on"
                         " the seed set alone (--seed-per-class, default 8, drawn per seed); shipped: the shipped CNN"
                         " itself (its output layer trained on all of folds 2-5) is served")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=["clarity", "clarity+semantic"])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--per-cycle", type=int, default=50, help="crawl results per cycle (all classes)")
    ap.add_argument("--per-query-max", type=int, default=5, help="results per crawl query")
    ap.add_argument("--iterations", type=int, default=1, help="selection iterations per learning step")
    ap.add_argument("--distractors", type=int, default=20)
    ap.add_argument("--margin", type=float, default=0.05,
                    help="the gate: the most held-out AP one class may lose (nels run --margin)")
    ap.add_argument("--warm-start", action="store_true", help="fine-tune the serving head (nels run --warm-start)")
    ap.add_argument("--seed-per-class", type=int, default=None, metavar="N",
                    help="the labelled seed: N clips per class of folds 2-5 (seedhead: default 8, a random draw"
                         " per seed; shipped: default all 1600)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "run-experiment"))
    ap.add_argument("--work", default=None,
                    help="where the libraries go (default: <NELS cache>/run-experiment/<out folder name>)")
    ap.add_argument("--report-only", action="store_true", help="rewrite report.md/png from --out's results")
    ap.add_argument("--recollect", action="store_true",
                    help="with --report-only: read every finished run's figures again from its library")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the CNN in this process (pool embeddings, re-index): no thread spinning on busy cores
    out = Path(a.out)
    if a.report_only:
        old = (out / "report.md").read_text().split("Command: `")[1].split("`")[0] if (out / "report.md").exists() else ""
        if a.recollect:
            from nels import config
            from nels.store.library import Library

            work = Path(a.work or config.cache_dir() / "run-experiment" / out.name)
            for f in sorted((out / "runs").glob("*.json")):
                r = json.loads(f.read_text())
                lib = Library(work / f"lib-{r.get('design', 'shipped')}-{r['seed']}-{r['strategy'].replace('+', '-')}"
                                     f"{'-warm' if r.get('warm_start') else ''}", create=False)
                try:
                    new = collect(lib, VideoSite(site_videos(r["seed"], a.distractors)), r["seed"], r["strategy"],
                                  r["wall_s"], r["cpu_s"])
                finally:
                    lib.close()
                r.update(new)
                f.write_text(json.dumps(r, indent=1) + "\n")
            (out / "results.json").write_text(json.dumps(gather(out), indent=1) + "\n")
        report(gather(out) or json.loads((out / "results.json").read_text()), out, old)
        return
    if not (ESC50 / "meta" / "esc50.csv").exists():
        sys.exit(f"ESC-50 not found at {ESC50}")
    from nels import config

    (out / "runs").mkdir(parents=True, exist_ok=True)
    work = Path(a.work or config.cache_dir() / "run-experiment" / out.name)
    work.mkdir(parents=True, exist_ok=True)
    held = heldout_folder(work)
    cmd = "nice -n 10 python3 bench/run_experiment.py " + " ".join(sys.argv[1:])
    for seed in a.seeds:
        seed_dir = model = None
        if a.design == "seedhead":
            seed_dir = seed_folder(work, a.seed_per_class or 8, seed)
            model = seed_model(work, seed_dir)
        elif a.seed_per_class:
            seed_dir = seed_folder(work, a.seed_per_class)
        for strategy in a.strategies:
            f = out / "runs" / f"seed{seed}-{strategy.replace('+', '-')}.json"
            if f.exists():
                continue  # done by an earlier (interrupted) invocation
            r = one_run(seed, strategy, a.cycles, a.per_cycle, held, work, a.distractors, seed_dir, a.warm_start,
                        model, a.iterations, a.per_query_max, f"-{a.design}", a.margin)
            r.update(design=a.design, warm_start=a.warm_start, margin=a.margin, seed_set=seed_dir.name if seed_dir else "folds 2-5")
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=1) + "\n")
            os.replace(tmp, f)
            rows = gather(out)
            (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
            report(rows, out, cmd)
            print(json.dumps({k: r[k] for k in ("seed", "strategy", "seed_model_map", "serving_map_after_cycle",
                                                "precision_per_cycle", "wall_s")}), flush=True)


if __name__ == "__main__":
    main()
