"""`nels train --backbone yamnet`: your own classes on a pretrained backbone, in minutes.

A small classifier head (an MLP, `nels.encoders.head`) learns the dataset's classes from the backbone's
window embeddings (YAMNet: 1024-d, one per 0.975 s window), the clip's label on every window of the clip.

* **Windows, computed once.** Each clip is framed as the library frames it (2 s / 1 s segments, digital
  silence skipped, the backbone's windows inside them: `nels.encoders.head.clip_windows`); the
  embeddings are cached per (dataset files, backbone weights, view) as an .npz under `$NELS_CACHE/backbone`.
  Extra *views* of each clip (hparam `views`: [offset seconds, gain dB] pairs) shift the window grid and the
  level before the backbone sees the audio; they add training windows only.
* **Training** (torch, seconds per epoch on a CPU): windows of the training clips, each clip weighted equally
  however many windows it has; embeddings standardised; noise, input dropout and mixup (between windows of
  different clips, soft labels) in embedding space; label smoothing; AdamW with a cosine schedule.
* **Validation split by source recording** (`nels.training.train.stratified_split` with `source_group`, the
  CNN's very split for the same seed), clip accuracy with the windows pooled as inference pools them;
  early stopping on it; the clip pooling (mean of window probabilities or of window log-probabilities) is
  chosen on it. `members` > 1 trains that many seeds (same split) and averages their probabilities.
* **Late fusion with a NELS CNN** (hparam `fuse_cnn`: a model folder trained with the same --exclude-fold and
  seed, so its validation clips are this run's): the weight of its log-probabilities is chosen on the
  validation clips only; the CNN is copied into the head folder and runs beside the backbone at inference.
* The held-out fold (esc50 `--exclude-fold K`) is never seen; it is scored at the end for the model card.
"""
from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nels.errors import DatasetError, ModelError
from nels.training.windows import window_embeddings

HEAD_VERSION = "1"


def default_head_hparams() -> dict:
    return {
        "epochs": 200,  # at most; early stopping on validation usually ends sooner
        "patience": 25,
        "select": "accuracy",  # model selection on validation: 'accuracy' (ties: lower NLL) or 'nll' (clip NLL)
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "input": "embedding",  # or 'embedding+scores': with the backbone's own class scores (log-odds)
        "hidden": [1024],  # hidden layer sizes ([] = logistic regression on the embedding)
        "dropout": 0.5,
        "input_dropout": 0.2,
        "noise": 0.2,  # gaussian noise on the standardised embedding (std)
        "mix_prob": 0.5,  # share of a batch mixed with another window (mixup in embedding space)
        "mix_alpha": 0.4,
        "label_smoothing": 0.1,
        "val_fraction": 0.1,
        "members": 3,  # ensemble of this many seeds (same validation split)
        # extra training views of each clip: [offset seconds, gain dB] (the window grid shifted by a quarter, half,
        # three quarters of YAMNet's 0.48 s hop; the level -6 / +6 dB): +0.8 points of validation accuracy
        "views": [[0.24, 0.0], [0.12, -6.0], [0.36, 6.0]],
        "min_level_db": None,  # drop training windows this many dB below their clip's loudest (None: keep all)
        "pooling": "validation",  # 'validation', or fixed: 'windows-mean-prob' / 'windows-mean-logit'
        "fuse_cnn": None,  # a NELS CNN folder (same --exclude-fold and seed) to fuse with, weight chosen on validation
        "fuse_weights": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        # the cross-modal joint space on the head's segment vectors (the backbone's), trained after the head into
        # <head>/joint exactly as `nels train-joint --model <head>` does: false, true, or train_joint's options
        # {"epochs", "loss", "vocabulary", "phrases"} (the vocabulary must describe every class)
        "joint": False,
    }


# ----------------------------------------------------------------------------------------------- training
def _build(in_dim: int, n_classes: int, hp: dict):
    import torch
    from torch import nn

    layers: list = [nn.Dropout(hp["input_dropout"])] if hp["input_dropout"] else []
    d = in_dim
    for h in hp["hidden"]:
        layers += [nn.Linear(d, int(h)), nn.ReLU(), nn.Dropout(hp["dropout"])]
        d = int(h)
    layers.append(nn.Linear(d, n_classes))
    return torch.nn.Sequential(*layers)


def _linear_layers(model) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    return [(m.weight.detach().float().numpy().copy(), m.bias.detach().float().numpy().copy())
            for m in model if isinstance(m, torch.nn.Linear)]


def clip_log_probs(net, emb: np.ndarray, owner: np.ndarray, clips: np.ndarray) -> list[np.ndarray]:
    """Per clip in `clips`, the (w, C) head log-probabilities of its windows."""
    lp = net.log_probs(emb[np.isin(owner, clips)])
    own = owner[np.isin(owner, clips)]
    return [lp[own == c] for c in clips]


def pooled(per_clip: list[np.ndarray], pooling: str) -> np.ndarray:
    from nels.encoders.head import pool

    return np.stack([pool(lp, pooling) for lp in per_clip])


def _train_member(X, Y, w, val, n_classes, hp, seed, log, tag: str, per_epoch: int | None = None):
    """One MLP on windows X (standardised) with integer labels Y and sampling weights w. `val` = (Xv, owner_v,
    clips_v, yv) for clip-level validation; an epoch is `per_epoch` windows (default: len(X)).
    Returns (layers, best validation accuracy, best epoch, history)."""
    import torch

    from nels.encoders.head import HeadNet, POOLINGS

    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    model = _build(X.shape[1], n_classes, hp)
    bs = min(int(hp["batch_size"]), len(X))
    steps = max(10, int(math.ceil((per_epoch or len(X)) / bs)))  # extra views add variety, not epoch length
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["epochs"] * steps)
    p = w / w.sum()
    Xt = torch.from_numpy(X)
    eye = np.eye(n_classes, dtype=np.float32)
    ls = float(hp["label_smoothing"])
    best = (-math.inf, -math.inf, 0, None)  # (selection key..., epoch, layers)
    history = []
    Xv, ov, cv, yv = val
    ident = (np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32))
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        tot = 0.0
        for _ in range(steps):
            b = rng.choice(len(X), size=bs, p=p)
            x = Xt[b]
            t = eye[Y[b]]
            if hp["noise"]:
                x = x + float(hp["noise"]) * torch.randn_like(x)
            if hp["mix_prob"] > 0:
                perm = rng.permutation(bs)
                lam = rng.beta(hp["mix_alpha"], hp["mix_alpha"], size=bs).astype(np.float32)
                lam = np.maximum(lam, 1 - lam)  # the first window stays the main one
                lam = np.where(rng.rand(bs) < hp["mix_prob"], lam, 1.0).astype(np.float32)
                lt = torch.from_numpy(lam)[:, None]
                x = lt * x + (1 - lt) * x[perm]
                t = lam[:, None] * t + (1 - lam[:, None]) * t[perm]
            if ls:
                t = t * (1 - ls) + ls / n_classes
            loss = -(torch.from_numpy(t) * torch.log_softmax(model(x), dim=1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        model.eval()
        layers = _linear_layers(model)
        if len(cv):
            net = HeadNet([layers], *ident)
            per = clip_log_probs(net, Xv, ov, cv)
            accs = {pl: float((pooled(per, pl).argmax(1) == yv).mean()) for pl in POOLINGS}
            acc = max(accs.values()) if hp["pooling"] == "validation" else accs[hp["pooling"]]
            vloss = float(-np.mean([np.log(max(pooled([lp], "windows-mean-prob")[0][y], 1e-12)) for lp, y in zip(per, yv)]))
        else:
            acc, vloss = -tot / steps, tot / steps
        history.append({"epoch": epoch, "loss": round(tot / steps, 4), "val_acc": round(acc, 4), "val_nll": round(vloss, 4)})
        key = (acc, -vloss) if hp["select"] == "accuracy" else (-vloss, acc)
        if key > best[:2]:
            best = (*key, epoch, layers)
        if epoch % 10 == 0 or epoch == 1:
            log(f"{tag} epoch {epoch} loss {tot / steps:.3f} val_acc {acc:.3f} val_nll {vloss:.3f} "
                f"(best @ {best[2]})")
        if epoch - best[2] >= hp["patience"]:
            log(f"{tag} early stop at epoch {epoch}: best validation ({hp['select']}) at epoch {best[2]}")
            break
    return best[3], history[best[2] - 1]["val_acc"], best[2], history


def equivalent_command(dataset, fmt, exclude_fold, out, backbone, epochs, seed, hparams) -> str:
    parts = ["nels", "train", "--backbone", str(backbone), "--dataset", str(dataset), "--format", fmt]
    if exclude_fold is not None:
        parts += ["--exclude-fold", str(exclude_fold)]
    if out is not None:
        parts += ["--out", str(out)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    parts += ["--seed", str(seed)]
    if hparams:
        parts += ["--hparams", json.dumps(hparams, sort_keys=True)]
    return " ".join(shlex.quote(p) for p in parts)


def load_backbone(spec: str):
    from nels.encoders.registry import create_encoder

    try:
        bb = create_encoder(spec)
    except ModelError as exc:
        raise ModelError(f"--backbone {spec}: {exc}") from None
    if not hasattr(bb, "window_outputs"):
        raise ModelError(f"--backbone {spec}: {bb.name} does not expose window embeddings (a backbone such as"
                         f" 'yamnet' does)")
    return bb


def _load_fusion_cnn(path, labels, exclude_fold, seed, log):
    from nels.encoders.cnn import CNNEncoder

    try:
        enc = CNNEncoder.load(path)
    except ModelError as exc:
        raise DatasetError(f"fuse_cnn: {exc}") from None
    if enc.labels != list(labels):
        raise DatasetError(f"fuse_cnn {path}: trained on other classes than this dataset's")
    tr = enc.meta.get("training") or {}
    if tr.get("exclude_fold") != exclude_fold or tr.get("seed") != seed:
        raise DatasetError(f"fuse_cnn {path}: trained with --exclude-fold {tr.get('exclude_fold')} and --seed"
                           f" {tr.get('seed')}, this run uses {exclude_fold} and {seed}; its fusion weight would be"
                           " chosen on clips it trained on (or it saw the held-out fold)")
    log(f"late fusion with the CNN {path} ({enc.name}), weight chosen on validation")
    return enc


def _cnn_clip_probs(enc, ds, items, cache, log) -> np.ndarray:
    """The CNN's clip probabilities (its own pooling) for some items of `ds` (log-mels cached as `nels train`
    caches them)."""
    from nels.training import datasets as D
    from nels.training.train import predict_clips

    sub = D.Dataset(ds.root, ds.format, ds.labels, list(items), ds.expected_seconds)
    feats = D.compute_features(sub, enc.feature_config, cache, log=log, progress=False)
    by = {str(it.path): m for it, m in zip(feats.items, feats.mels)}
    mels = [by[str(it.path)] for it in items]
    return predict_clips(enc, mels, enc.meta.get("pooling", "segments-mean-prob"))


def train_head(dataset: str, fmt: str = "esc50", exclude_fold: int | None = None, out: str | None = None,
               backbone: str = "yamnet", epochs: int | None = None, seed: int = 0, cache: str | None = None,
               hparams: dict | None = None, command: str | None = None, quiet: bool = False,
               progress: bool = True, threads: int | None = None) -> dict:
    """Train a head on `backbone`'s window embeddings of a dataset and write a head folder (see the module
    docstring). Returns a summary (paths, metrics)."""
    import torch

    from nels.encoders.head import INPUTS, POOLINGS, HeadNet, fuse, head_input, save_head
    from nels.metrics import classification_metrics
    from nels.training import datasets as D
    from nels.training.train import Log, source_group, stratified_split

    hp = {**default_head_hparams(), **(hparams or {})}
    unknown = set(hparams or {}) - set(default_head_hparams())
    if unknown:
        raise DatasetError(f"unknown head hyper-parameter(s) {sorted(unknown)}; known: {sorted(default_head_hparams())}")
    if hp["select"] not in ("accuracy", "nll"):
        raise DatasetError(f"select must be 'accuracy' or 'nll', not {hp['select']!r}")
    if hp["joint"] not in (True, False, None) and (not isinstance(hp["joint"], dict) or set(hp["joint"]) - set(JOINT_OPTIONS)):
        raise DatasetError(f"joint must be true, false or an object with some of {list(JOINT_OPTIONS)}, not {hp['joint']!r}")
    if hp["pooling"] not in ("validation", *POOLINGS):
        raise DatasetError(f"pooling must be 'validation' or one of {list(POOLINGS)}, not {hp['pooling']!r}")
    if epochs is not None:
        if epochs < 1:
            raise DatasetError("--epochs must be >= 1")
        hp["epochs"] = int(epochs)
    try:
        views = [(float(o), float(g)) for o, g in hp["views"]]
    except (TypeError, ValueError):
        raise DatasetError('views must be a list of [offset seconds, gain dB] pairs, e.g. [[0.24, 0], [0, -6]]') from None
    if fmt not in ("esc50", "folders"):
        raise DatasetError(f"--format {fmt}: a head trains on 'esc50' or 'folders' datasets")
    if threads:
        torch.set_num_threads(threads)
    ds = D.load_dataset(dataset, fmt)
    if exclude_fold is not None and fmt == "esc50" and exclude_fold not in ds.folds:
        raise DatasetError(f"--exclude-fold {exclude_fold}: the dataset's folds are {ds.folds}")
    bb = load_backbone(backbone)
    out = Path(out) if out else Path("models") / (f"{Path(dataset).resolve().name}-{bb.space}-head" + (
        f"-no-fold{exclude_fold}" if exclude_fold is not None else ""))
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "training.log", quiet=quiet)
    cmd = command or equivalent_command(dataset, fmt, exclude_fold, out, backbone, epochs, seed, hparams)
    log(f"nels train --backbone: {cmd}")
    log(f"dataset {ds.root} ({fmt}): {len(ds.items)} clips, {len(ds.labels)} classes; backbone {bb.name}")
    t_feat = time.time()
    W = window_embeddings(ds, bb, cache, (0.0, 0.0), log=log, progress=progress and not quiet)
    extra_views = [window_embeddings(ds, bb, cache, v, log=log, progress=progress and not quiet) for v in views]
    feat_seconds = time.time() - t_feat
    if hp["input"] not in INPUTS:
        raise DatasetError(f"input must be one of {list(INPUTS)}, not {hp['input']!r}")
    for V in [W, *extra_views]:
        V.x = head_input(hp["input"], V.emb, V.scores)  # what the head reads per window
    t0 = time.time()
    items = W.items
    labels_all = np.array([it.label for it in items])
    folds_all = np.array([it.fold if it.fold is not None else 0 for it in items])
    test = np.flatnonzero(folds_all == exclude_fold) if (exclude_fold is not None and fmt == "esc50") else np.array([], int)
    pool_idx = np.setdiff1d(np.arange(len(items)), test)
    rng = np.random.RandomState(seed)
    groups = np.array([source_group(it.path) for it in items])
    tr_rel, va_rel = stratified_split(labels_all[pool_idx], hp["val_fraction"], rng, groups[pool_idx])
    tr, va = pool_idx[tr_rel], pool_idx[va_rel]
    if len(tr) == 0:
        raise DatasetError(f"{ds.root}: no training clips left after the split")
    log(f"split: train {len(tr)}, validation {len(va)}, held-out test {len(test)} clips")

    # training windows: the reference view plus the extra views, of the training clips only
    index = {str(it.path): i for i, it in enumerate(items)}
    xs, ys, ws = [], [], []
    train_set = set(tr.tolist())
    for V in [W, *extra_views]:
        clip = np.array([index.get(str(V.items[o].path), -1) for o in range(len(V.items))])[V.owner]
        keep = np.isin(clip, list(train_set))
        if hp["min_level_db"] is not None:
            peak = np.full(len(V.items), -np.inf)
            np.maximum.at(peak, V.owner, V.level)
            keep &= V.level >= peak[V.owner] - float(hp["min_level_db"])
        xs.append(V.x[keep])
        ys.append(labels_all[clip[keep]])
        ws.append(clip[keep])
    X = np.concatenate(xs)
    Y = np.concatenate(ys)
    owner_tr = np.concatenate(ws)
    counts = np.bincount(owner_tr, minlength=len(items)).astype(np.float64)
    w = 1.0 / counts[owner_tr]
    mean = X.mean(axis=0).astype(np.float32)
    std = np.maximum(X.std(axis=0), 1e-3).astype(np.float32)
    Xs = ((X - mean) / std).astype(np.float32)
    vmask = np.isin(W.owner, va)
    val = (((W.x[vmask] - mean) / std).astype(np.float32), W.owner[vmask], va, labels_all[va])
    log(f"{len(X)} training windows ({len(views)} extra view(s)), {int(vmask.sum())} validation windows; "
        f"hidden {hp['hidden']}, {hp['members']} member(s)")
    n_classes = len(ds.labels)
    members, member_info = [], []
    for m in range(int(hp["members"])):
        layers, acc, ep, hist = _train_member(Xs, Y, w, val, n_classes, hp, seed * 1000 + m, log, f"member {m + 1}",
                                              per_epoch=len(xs[0]))
        members.append(layers)
        member_info.append({"seed": seed * 1000 + m, "validation_accuracy": round(acc, 4), "best_epoch": ep,
                            "epochs_run": len(hist)})
    # fold the standardisation into the network's statistics (HeadNet standardises its input itself)
    net = HeadNet(members, mean, std)
    val_by_pool: dict = {}
    if len(va):
        per = clip_log_probs(net, W.x, W.owner, va)
        val_by_pool = {pl: round(float((pooled(per, pl).argmax(1) == labels_all[va]).mean()), 4) for pl in POOLINGS}
    pooling = hp["pooling"]
    if pooling == "validation":
        pooling = max(POOLINGS, key=lambda p: (val_by_pool.get(p, 0.0), -POOLINGS.index(p)))
        log(f"clip pooling chosen on validation: {pooling} ({val_by_pool})")
    else:
        log(f"clip pooling fixed: {pooling} (validation: {val_by_pool})")
    metrics = {"validation_accuracy": val_by_pool.get(pooling), "validation_accuracy_by_pooling": val_by_pool,
               "members": member_info, "train_clips": int(len(tr)), "validation_clips": int(len(va)),
               "train_windows": int(len(X)), "validation_files": sorted(Path(items[i].path).stem for i in va),
               "skipped_clips": len(W.skipped), "window_seconds": round(feat_seconds, 1)}
    fusion = None
    if hp["fuse_cnn"]:
        cnn = _load_fusion_cnn(hp["fuse_cnn"], ds.labels, exclude_fold, seed, log)
        if not len(va):
            raise DatasetError("fuse_cnn: the fusion weight is chosen on validation clips, and this dataset has none")
        head_val = pooled(clip_log_probs(net, W.x, W.owner, va), pooling)
        cnn_val = _cnn_clip_probs(cnn, ds, [items[i] for i in va], cache, log)
        accs = {}
        for fw in hp["fuse_weights"]:
            p = fuse(np.log(np.maximum(head_val, 1e-30)), np.log(np.maximum(cnn_val, 1e-30)), float(fw))
            accs[float(fw)] = round(float((p.argmax(1) == labels_all[va]).mean()), 4)
        fw = max(accs, key=lambda k: (accs[k], -k))  # ties: the smaller CNN weight
        log(f"fusion weight chosen on validation: {fw} ({accs})")
        metrics["fusion_validation_accuracy"] = {str(k): v for k, v in accs.items()}
        if fw > 0:
            dst = out / "cnn"
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(Path(hp["fuse_cnn"]), dst, ignore=shutil.ignore_patterns("joint", ".checkpoint*", "*.log"))
            fusion = {"model": "cnn", "weight": fw, "source": str(hp["fuse_cnn"]), "cnn_name": cnn.name}
            metrics["validation_accuracy"] = accs[fw]
        fusion_cnn = (cnn, fw) if fw > 0 else None
    else:
        fusion_cnn = None
    train_seconds = time.time() - t0
    metrics["train_seconds"] = round(train_seconds, 1)
    if len(test):
        per = clip_log_probs(net, W.x, W.owner, test)
        by_pool = {}
        for pl in POOLINGS:
            p = pooled(per, pl)
            mm = classification_metrics(labels_all[test], p, n_classes)
            by_pool[pl] = {"accuracy": round(mm["accuracy"], 4), "mAP": round(mm["mAP"], 4)}
            log(f"held-out fold {exclude_fold} [{pl}]: accuracy {mm['accuracy']:.4f}, mAP {mm['mAP']:.4f}")
        if fusion_cnn is not None:
            pc = _cnn_clip_probs(fusion_cnn[0], ds, [items[i] for i in test], cache, log)
            p = np.exp(fuse(np.log(np.maximum(pooled(per, pooling), 1e-30)), np.log(np.maximum(pc, 1e-30)), fusion_cnn[1]))
            mm = classification_metrics(labels_all[test], p, n_classes)
            by_pool["fused"] = {"accuracy": round(mm["accuracy"], 4), "mAP": round(mm["mAP"], 4)}
            log(f"held-out fold {exclude_fold} [fused with the CNN, {pooling}]: accuracy {mm['accuracy']:.4f}")
        metrics["test_fold"] = exclude_fold
        metrics["test"] = by_pool
    esc = fmt == "esc50"
    licence = ("CC BY-NC 3.0 (trained on ESC-50, K. J. Piczak): research and non-commercial use only"
               if esc else "trained on a user-supplied dataset: the head carries that dataset's licence terms")
    name = f"{out.name}-head-v{HEAD_VERSION}"
    extra = {"backbone": backbone, "version": HEAD_VERSION, "input": hp["input"],
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "training": {"command": cmd, "dataset": str(ds.root), "format": fmt, "exclude_fold": exclude_fold,
                          "seed": seed, "hparams": hp},
             "metrics": metrics, "licence": licence,
             "backbone_licence": getattr(bb, "meta", {}).get("licence")}
    if fusion:
        extra["fusion"] = fusion
    save_head(out, net, ds.labels, bb, pooling, name, extra)
    write_head_card(out, name, ds, fmt, exclude_fold, cmd, metrics, hp, pooling, bb, backbone, licence, fusion)
    log(f"head written to {out} ({train_seconds:.0f} s training, {feat_seconds:.0f} s backbone windows)")
    summary = {"model": str(out), "out": str(out), "pooling": pooling, "metrics": metrics,
               "best_val_acc": metrics["validation_accuracy"], "train_seconds": round(train_seconds, 1)}
    if hp["joint"]:
        summary["joint"] = train_head_joint(dataset, fmt, exclude_fold, out, hp["joint"], seed, log, progress and not quiet,
                                            windows=W)
    return summary


JOINT_OPTIONS = ("epochs", "loss", "vocabulary", "phrases")


def train_head_joint(dataset: str, fmt: str, exclude_fold, head: Path, options, seed: int, log, progress: bool,
                     windows=None) -> dict:
    """The joint space of a just-written head folder (`<head>/joint`), trained on its segment vectors as `nels
    train-joint --model <head>` does (hparams "joint": true, or a dict of JOINT_OPTIONS); `windows`: the backbone
    windows the head was trained on (its segment vectors are pooled from them). Returns train_joint's report."""
    from nels.training.joint import train_joint

    opts = {} if options is True else options
    if not isinstance(opts, dict) or set(opts) - set(JOINT_OPTIONS):
        raise DatasetError(f"joint must be true, false or an object with some of {list(JOINT_OPTIONS)}, not {options!r}")
    log(f"joint space on the head's segment vectors ({json.dumps(opts) if opts else 'train-joint defaults'})")
    rep = train_joint(dataset, fmt, exclude_fold, str(head), loss=opts.get("loss", "both"), epochs=int(opts.get("epochs", 80)),
                      seed=seed, vocabulary=opts.get("vocabulary"), progress=progress, phrases=opts.get("phrases"),
                      windows=windows)
    f = rep["fusion"]["text"]
    log(f"joint space written to {rep['out']}: kept {rep['loss']}/{rep['text_tower']}; text search on validation"
        f" linguistic {f['linguistic']:.3f}, joint {f['joint']:.3f}, fused {f['fused']:.3f} ({rep['train_seconds']:.0f} s)")
    return rep


def write_head_card(out: Path, name, ds, fmt, exclude_fold, cmd, metrics, hp, pooling, bb, backbone, licence,
                    fusion) -> None:
    lines = [f"# {name}", "",
             f"A classifier head for NELS on the **{bb.name}** backbone ({backbone}): per-segment class probabilities"
             f" from the backbone's {bb.dim}-d window embeddings; the segment vectors are the backbone's own.", "",
             "## Made by", "", "```", cmd, "```", "",
             "## Data", "",
             f"- dataset: `{ds.root}` ({fmt}), {len(ds.labels)} classes"
             + (f"; fold {exclude_fold} held out (never seen in training)" if exclude_fold is not None else ""),
             f"- training clips {metrics['train_clips']} ({metrics['train_windows']} windows, views"
             f" {hp['views'] or 'reference only'}), validation clips {metrics['validation_clips']} (drawn from the"
             f" training folds, split by source recording), skipped clips {metrics['skipped_clips']}", "",
             "## Metrics", "",
             f"- validation accuracy (model selection): {metrics['validation_accuracy']}; members: "
             + ", ".join(f"seed {m['seed']} {m['validation_accuracy']:.3f} @ epoch {m['best_epoch']}" for m in metrics["members"]),
             f"- clip pooling: {pooling} (validation accuracy: "
             + ", ".join(f"{k} {v:.3f}" for k, v in metrics["validation_accuracy_by_pooling"].items()) + ")",
             f"- training time {metrics['train_seconds'] / 60:.1f} min (+ {metrics['window_seconds'] / 60:.1f} min of"
             " backbone windows, cached)"]
    if fusion:
        lines.append(f"- late fusion with the CNN `{fusion['source']}` (copied to `cnn/`), weight {fusion['weight']}"
                     f" chosen on validation: {metrics['fusion_validation_accuracy']}")
    if "test" in metrics:
        lines += ["", f"Held-out fold {metrics['test_fold']} (clip level):", "",
                  "| clip pooling | accuracy | mAP |", "|---|---|---|"]
        for k, v in metrics["test"].items():
            lines.append(f"| {k} | {v['accuracy']:.4f} | {v['mAP']:.4f} |")
    lines += ["", "## Model", "",
              f"- input per window: {hp['input']}; layers: " + " -> ".join(str(h) for h in hp["hidden"]) + f" -> {len(ds.labels)}"
              f" (ReLU), {hp['members']} member(s) averaged; numpy at inference",
              f"- hyper-parameters: {json.dumps(hp)}", "",
              "## Licence", "", f"- this head: {licence}",
              f"- backbone: {getattr(bb, 'meta', {}).get('licence') or 'see its model card'} (its weights are not part"
              " of this folder)"]
    if fusion:
        lines.append("- the fused CNN (`cnn/`): see its MODEL_CARD.md")
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
