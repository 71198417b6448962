"""`nels train`: train the sound-event CNN on ESC-50 or a folder-per-class dataset.

Recipe (CPU-sized; see bench/RESULTS.md for what it reaches):

* log-mels computed once per (dataset, FeatureConfig) and cached (`nels.training.datasets`);
* training examples are random 2 s crops (what the library feeds the model at inference), biased away
  from crops that hold only the silence ESC-50 pads short events with (a crop whose loudest frame is
  > 20 dB below the clip's loudest is redrawn), so a label is rarely attached to silence;
* augmentation: between-class mixing in the *power* domain (two crops summed as sounds, with a random
  relative gain of +-6 dB, soft labels = mixing ratio), random gain of +-6 dB (the loudness normalisation
  happens per clip, so a 2 s crop's level still varies; at inference each segment may be normalised on
  its own; gain before normalisation would be a no-op, so it is applied to the log-mel), SpecAugment
  (2 time masks <= 20 frames, 2 frequency masks <= 8 bands);
* AdamW + one-cycle learning rate, label smoothing, a validation split drawn from the training folds
  (stratified, 10 %), model selection / early stopping on validation clip accuracy;
* a checkpoint every epoch (`<out>/.checkpoint.pt`): re-running the same command resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nels.audio.features import FeatureConfig
from nels.errors import DatasetError, ModelError

CROP_FRAMES = 200  # 2 s at a 10 ms hop: the library's segment length
MIN_STEPS = 20  # optimiser steps per epoch, at least
MODEL_VERSION = "2"  # 2: the second recipe (full-resolution stem, flatten head); bumped so libraries notice


def default_hparams(epochs: int = 200) -> dict:
    return {
        "epochs": epochs,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 5e-2,
        "label_smoothing": 0.1,
        "mix_prob": 0.8,
        "mix_alpha": 1.0,
        "gain_db": 6.0,
        "time_masks": 2, "time_mask_max": 20,
        "freq_masks": 2, "freq_mask_max": 8,
        "val_fraction": 0.1,
        "patience": None,  # None: max(30, epochs // 3)
        "crop_frames": CROP_FRAMES,
        "freq_shift": 0,  # shift the mel axis by up to this many bands (a pitch/timbre change)
        "time_stretch": 0.0,  # stretch time by a factor in [1 - x, 1 + x] (a tempo change)
        "ema": 0.0,  # decay of an exponential moving average of the weights (0: off); the EMA is what is kept
        "select": "best",  # 'best' validation epoch, or 'last' epoch (a fixed schedule)
        "precision": "auto",  # 'bf16' autocast (2x faster on CPUs with AVX512-BF16/AMX), 'fp32', or 'auto'
        # knowledge distillation ("born-again" student): a trained NELS model folder whose soft predictions on
        # the very batch the student sees (same crops, mixing, masks) are part of the target. It must have been
        # trained with the same --exclude-fold and seed, so that neither the held-out fold nor the student's
        # validation clips leak through it.
        "teacher": None,
        "kd_weight": 0.5,  # share of the loss that matches the teacher (the rest: the mixed hard labels)
        "kd_temperature": 2.0,  # softens both distributions in the matching term (Hinton et al. 2015)
        "pooling": "validation",  # clip pooling: chosen on 'validation', or fixed to one of POOLINGS
        # fine-tuning: a NELS CNN model folder whose every layer (and mel normalisation) starts the network; its
        # output rows for the classes both share too (new classes start at random); the architecture is its own
        "init": None,
    }


class Log:
    def __init__(self, path: Path | None, quiet: bool = False):
        self.path = path
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {msg}"
        if not self.quiet:
            try:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            except Exception:  # noqa: BLE001
                print(line, file=sys.stderr)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.RandomState,
                     groups: np.ndarray | None = None):
    """Indices (train, val): about `fraction` of each class (at least one item when a class has >= 2).

    groups: items that share a group (ESC-50 clips cut from one source recording) land on the same side,
    so validation measures generalisation to new recordings, as the test fold does; without this the
    validation accuracy of ESC-50 runs sat ~9 points above the test accuracy."""
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if groups is None:
            units = [[i] for i in idx]
        else:
            by: dict = {}
            for i in idx:
                by.setdefault(groups[i], []).append(i)
            units = list(by.values())
        units = [units[j] for j in rng.permutation(len(units))]
        want = int(round(len(idx) * fraction))
        if len(units) >= 2:
            want = max(want, 1)
        else:
            want = 0
        k = 0
        got = 0
        while k < len(units) - 1 and got < want:
            got += len(units[k])
            k += 1
        va.extend(i for u in units[:k] for i in u)
        tr.extend(i for u in units[k:] for i in u)
    return np.array(sorted(tr), dtype=int), np.array(sorted(va), dtype=int)


def source_group(path) -> str:
    """The recording a clip was cut from: ESC-50 names clips FOLD-SOURCE-TAKE-TARGET; other files are
    their own group."""
    stem = Path(path).stem
    parts = stem.split("-")
    if len(parts) == 4 and parts[0].isdigit() and parts[3].isdigit():
        return f"{parts[0]}-{parts[1]}"
    return stem


def _pad_to(m: np.ndarray, n: int) -> np.ndarray:
    if m.shape[0] >= n:
        return m
    reps = int(math.ceil(n / max(1, m.shape[0])))
    return np.tile(m, (reps, 1))[:n]


def _resample_time(m: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of (frames, bands) to n frames."""
    src = np.linspace(0, m.shape[0] - 1, n, dtype=np.float32)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, m.shape[0] - 1)
    w = (src - lo)[:, None]
    return m[lo] * (1 - w) + m[hi] * w


def sample_crops(mels, idx, rng, crop: int, max_tries: int = 5, stretch: float = 0.0) -> np.ndarray:
    """One random `crop`-frame window per clip index, avoiding windows with no event in them.

    stretch: each window is cut `crop * r` frames long, r uniform in [1 - stretch, 1 + stretch], and
    resampled to `crop` frames (the same event, faster or slower)."""
    out = np.empty((len(idx), crop, mels[0].shape[1]), dtype=np.float32)
    for j, i in enumerate(idx):
        want = crop
        if stretch > 0:
            want = max(8, int(round(crop * rng.uniform(1 - stretch, 1 + stretch))))
        m = _pad_to(mels[i], want)
        n = m.shape[0]
        if n == want:
            w = m
        else:
            energy = m.max(axis=1)
            peak = energy.max()
            for _ in range(max_tries):
                s = rng.randint(0, n - want + 1)
                if energy[s:s + want].max() >= peak - 20.0:
                    break
            w = m[s:s + want]
        out[j] = w if want == crop else _resample_time(w, crop)
    return out


def shift_bands(x: np.ndarray, max_shift: int, rng: np.random.RandomState) -> np.ndarray:
    """Shift each example of (B, T, F) along the mel axis by up to `max_shift` bands, repeating the edge
    band into the gap (a pitch / timbre change; in place)."""
    if max_shift <= 0:
        return x
    for j, s in enumerate(rng.randint(-max_shift, max_shift + 1, size=x.shape[0])):
        if s > 0:
            x[j, :, s:] = x[j, :, :-s].copy()
            x[j, :, :s] = x[j, :, s:s + 1]
        elif s < 0:
            x[j, :, :s] = x[j, :, -s:].copy()
            x[j, :, s:] = x[j, :, s - 1:s]
    return x


def augment(x: np.ndarray, y: np.ndarray, n_classes: int, hp: dict, rng: np.random.RandomState):
    """Between-class mixing (power domain) + gain + SpecAugment on a batch of crops (B, T, F) in dB."""
    b = x.shape[0]
    tgt = np.zeros((b, n_classes), dtype=np.float32)
    tgt[np.arange(b), y] = 1.0
    gain = rng.uniform(-hp["gain_db"], hp["gain_db"], size=(b, 1, 1)).astype(np.float32)
    x = x + gain
    if hp["mix_prob"] > 0:
        perm = rng.permutation(b)
        lam = rng.beta(hp["mix_alpha"], hp["mix_alpha"], size=b).astype(np.float32)
        lam = np.where(rng.rand(b) < hp["mix_prob"], lam, 1.0).astype(np.float32)
        # mix as sounds: power sum, with the second source's level set by the ratio
        g1 = 10.0 * np.log10(np.maximum(lam, 1e-3))
        g2 = 10.0 * np.log10(np.maximum(1 - lam, 1e-3))
        p = np.logaddexp((x + g1[:, None, None]) * (np.log(10) / 10), (x[perm] + g2[:, None, None]) * (np.log(10) / 10))
        x = (p * (10 / np.log(10))).astype(np.float32)
        # the mixture is re-levelled like the loudness normalisation would do
        x = x - np.maximum(g1, g2)[:, None, None]
        tgt = lam[:, None] * tgt + (1 - lam[:, None]) * tgt[perm]
    x = shift_bands(x, int(hp.get("freq_shift", 0)), rng)
    fill = x.mean(axis=(1, 2))
    t_len, f_len = x.shape[1], x.shape[2]
    for j in range(b):
        for _ in range(hp["time_masks"]):
            w = rng.randint(0, hp["time_mask_max"] + 1)
            s = rng.randint(0, max(1, t_len - w))
            x[j, s:s + w, :] = fill[j]
        for _ in range(hp["freq_masks"]):
            w = rng.randint(0, hp["freq_mask_max"] + 1)
            s = rng.randint(0, max(1, f_len - w))
            x[j, :, s:s + w] = fill[j]
    return x, tgt


def clip_predictions(model, mels, pooling: str = "segments-mean-prob", batch: int = 128) -> np.ndarray:
    """Clip-level class probabilities for a list of clip log-mels with a torch model (eval mode)."""
    from nels.encoders.cnn import CNNEncoder, bf16_supported

    enc = CNNEncoder.__new__(CNNEncoder)
    enc.model, enc.batch_size = model, batch
    enc.bf16 = bf16_supported()
    enc.labels = [None] * model.fc.out_features
    enc.dim = model.emb.out_features
    enc.feature_config = FeatureConfig(n_mels=mels[0].shape[1]) if len(mels) else FeatureConfig()
    return predict_clips(enc, mels, pooling)


def predict_clips(enc, mels, pooling: str = "segments-mean-prob") -> np.ndarray:
    """Clip probabilities for many clips at once (segments of all clips batched together)."""
    from nels.encoders.cnn import pool_segments, segment_mels, softmax

    if pooling == "whole":
        lo, _ = enc.forward_mels(list(mels))
        return softmax(lo)
    segs, owner = [], []
    for i, m in enumerate(mels):
        s = segment_mels(m)
        segs.extend(s)
        owner.extend([i] * len(s))
    lo, _ = enc.forward_mels(segs)
    owner = np.array(owner)
    out = np.zeros((len(mels), lo.shape[1]), dtype=np.float32)
    for i in range(len(mels)):
        sel = lo[owner == i]
        if pooling == "segments-mean-logit":
            out[i] = softmax(pool_segments(sel)[None])[0]
        else:
            out[i] = pool_segments(softmax(sel))
    return out


POOLINGS = ("segments-mean-prob", "segments-mean-logit", "whole")


def choose_pooling(model, val_mels, val_labels) -> tuple[str, dict]:
    """The clip pooling with the best validation accuracy (ties: the first of POOLINGS); never the test fold."""
    import torch

    if not len(val_mels):
        return POOLINGS[0], {}
    accs = {}
    with torch.inference_mode():
        for p in POOLINGS:
            accs[p] = round(float((clip_predictions(model, val_mels, p).argmax(1) == np.asarray(val_labels)).mean()), 4)
    best = max(POOLINGS, key=lambda p: (accs[p], -POOLINGS.index(p)))
    return best, accs


def load_teacher(hp: dict, labels: list[str], exclude_fold, seed: int, feature_config: FeatureConfig, log) -> list:
    """The teacher model(s) of a distillation run (`teacher`: one model folder or a list of them, an ensemble
    whose averaged probabilities teach), each refused unless it shares the student's classes, features,
    held-out fold and seed (the seed fixes the validation split, so the teacher never saw those clips)."""
    from nels.encoders.cnn import CNNEncoder

    paths = [hp["teacher"]] if isinstance(hp["teacher"], str) else list(hp["teacher"])
    models = []
    for path in paths:
        try:
            enc = CNNEncoder.load(path, expected_config=feature_config)
        except ModelError as exc:
            raise DatasetError(f"teacher: {exc}") from None
        if enc.labels != list(labels):
            raise DatasetError(f"teacher {path}: trained on other classes than this dataset's")
        tr = enc.meta.get("training") or {}
        if tr.get("exclude_fold") != exclude_fold or tr.get("seed") != seed:
            raise DatasetError(f"teacher {path}: trained with --exclude-fold {tr.get('exclude_fold')} and "
                               f"--seed {tr.get('seed')}, this run uses {exclude_fold} and {seed}; a teacher that saw "
                               "the held-out fold or the validation clips would leak them into the student")
        for prm in enc.model.parameters():
            prm.requires_grad_(False)
        models.append(enc.model)
        log(f"distilling from teacher {path} ({enc.name}), weight {hp['kd_weight']}, "
            f"temperature {hp['kd_temperature']}")
    return models


def teacher_logits(teachers: list, x: np.ndarray, bf16: bool):
    """The teacher's logits on the student's (augmented) batch; for several teachers, the log of their
    mean probability (so the student learns the ensemble's averaged prediction)."""
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        xt = torch.from_numpy(x)
        outs = [t(xt)[0].float() for t in teachers]
    if len(outs) == 1:
        return outs[0].clone()
    return torch.log(torch.stack([torch.softmax(o, dim=1) for o in outs]).mean(0).clamp_min(1e-12))


def distillation_loss(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) at `temperature`, scaled by T^2 so its gradients keep their size (Hinton et al.)."""
    import torch

    t = float(temperature)
    p_t = torch.softmax(teacher_logits / t, dim=1)
    return (p_t * (torch.log(p_t.clamp_min(1e-8)) - torch.log_softmax(student_logits / t, dim=1))).sum(1).mean() * t * t


def _init_state(model_dir) -> tuple[dict, dict]:
    """(state dict as float32, model.json) of the CNN model folder a fine-tuning starts from."""
    import torch

    d = Path(model_dir)
    try:
        meta = json.loads((d / "model.json").read_text())
        state = torch.load(d / meta.get("weights", "weights.pt"), map_location="cpu", weights_only=True)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"hparams init: {d} is not a NELS CNN model folder ({exc})") from None
    if "fc.weight" not in state or "arch" not in meta:
        raise DatasetError(f"hparams init: {d} is not a NELS CNN model folder (no output layer or arch)")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, meta


def load_init(model, init: tuple[dict, dict], labels: list[str]) -> int:
    """Load `init` (see `_init_state`) into `model`: every layer, and the output rows of the classes in both
    (matched by name); returns how many output rows were shared."""
    import torch

    state, meta = init
    own = model.state_dict()
    old = list(meta["labels"])
    fc_w, fc_b = own["fc.weight"].clone(), own["fc.bias"].clone()
    shared = 0
    for i, name in enumerate(labels):
        if name in old:
            fc_w[i], fc_b[i] = state["fc.weight"][old.index(name)], state["fc.bias"][old.index(name)]
            shared += 1
    merged = {**{k: v for k, v in state.items() if not k.startswith("fc.")}, "fc.weight": fc_w, "fc.bias": fc_b}
    with torch.no_grad():
        model.load_state_dict(merged)
    return shared


def _run_key(ds_root, fmt, exclude_fold, seed, hp, arch, fconf) -> str:
    blob = json.dumps([str(Path(ds_root).resolve()), fmt, exclude_fold, seed, hp, arch, fconf.to_dict()], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def equivalent_command(dataset: str, fmt: str, exclude_fold: int | None, out, epochs: int | None, seed: int,
                       arch: dict | None, hparams: dict | None) -> str:
    """The `nels train` command line that makes the same model as a `train(...)` call."""
    parts = ["nels", "train", "--dataset", str(dataset), "--format", fmt]
    if exclude_fold is not None:
        parts += ["--exclude-fold", str(exclude_fold)]
    if out is not None:
        parts += ["--out", str(out)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    parts += ["--seed", str(seed)]
    if arch:
        parts += ["--arch", json.dumps(arch, sort_keys=True)]
    if hparams:
        parts += ["--hparams", json.dumps(hparams, sort_keys=True)]
    return " ".join(shlex.quote(p) for p in parts)


def train(dataset: str, fmt: str = "esc50", exclude_fold: int | None = None, out: str | None = None,
          epochs: int | None = None, seed: int = 0, cache: str | None = None, arch: dict | None = None,
          hparams: dict | None = None, feature_config: FeatureConfig = FeatureConfig(), threads: int | None = None,
          command: str | None = None, quiet: bool = False, progress: bool = True,
          max_epochs_this_run: int | None = None) -> dict:
    """Train (or resume) and write a model folder. Returns a summary dict (paths, metrics).

    max_epochs_this_run: stop after this many epochs in this call (the checkpoint stays; for tests)."""
    import torch

    from nels.training import datasets as D
    from nels.encoders.cnn import DEFAULT_ARCH, RECOMMENDED_ARCH, build_model, save_model

    hp = {**default_hparams(), **(hparams or {})}
    if hp["pooling"] not in ("validation", *POOLINGS):  # before any feature is computed
        raise DatasetError(f"pooling must be 'validation' or one of {list(POOLINGS)}, not {hp['pooling']!r}")
    if epochs is not None:
        if epochs < 1:
            raise DatasetError("--epochs must be >= 1")
        hp["epochs"] = int(epochs)
    arch = {**DEFAULT_ARCH, **(RECOMMENDED_ARCH if arch is None else arch)}
    init = _init_state(hp["init"]) if hp.get("init") else None
    if init is not None:
        arch = init[1]["arch"]
        if init[1].get("feature_config") not in (None, asdict(feature_config)):
            raise DatasetError(f"hparams init: {hp['init']} was trained on other features than this run's")
    if threads:
        torch.set_num_threads(threads)
    ds = D.load_dataset(dataset, fmt)
    if exclude_fold is not None and fmt == "esc50" and exclude_fold not in ds.folds:
        raise DatasetError(f"--exclude-fold {exclude_fold}: the dataset's folds are {ds.folds}")
    out = Path(out) if out else Path("models") / f"{Path(dataset).resolve().name}-cnn" + (
        f"-no-fold{exclude_fold}" if exclude_fold is not None else "")
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "training.log", quiet=quiet)
    key = _run_key(dataset, fmt, exclude_fold, seed, hp, arch, feature_config)
    log(f"nels train: {command or ''}".strip())
    log(f"dataset {ds.root} ({fmt}): {len(ds.items)} clips, {len(ds.labels)} classes; run key {key}")
    feats = D.compute_features(ds, feature_config, cache, log=log, progress=progress and not quiet)
    if feats.skipped:
        log(f"{len(feats.skipped)} clip(s) skipped (reasons above)")
    labels_all = np.array([it.label for it in feats.items])
    folds_all = np.array([it.fold if it.fold is not None else 0 for it in feats.items])
    test_idx = np.flatnonzero(folds_all == exclude_fold) if (exclude_fold is not None and fmt == "esc50") else np.array([], int)
    pool_idx = np.setdiff1d(np.arange(len(feats.items)), test_idx)
    rng = np.random.RandomState(seed)
    groups_all = np.array([source_group(it.path) for it in feats.items])
    tr_rel, va_rel = stratified_split(labels_all[pool_idx], hp["val_fraction"], rng, groups_all[pool_idx])
    tr_idx, va_idx = pool_idx[tr_rel], pool_idx[va_rel]
    if len(tr_idx) == 0:
        raise DatasetError(f"{ds.root}: no training clips left after the split")
    log(f"split: train {len(tr_idx)}, validation {len(va_idx)}, held-out test {len(test_idx)}")
    mels = feats.mels
    n_classes = len(ds.labels)

    torch.manual_seed(seed)
    model = build_model(n_classes, feature_config.n_mels, arch)
    frames = np.concatenate([mels[i] for i in tr_idx])
    with torch.no_grad():
        model.mel_mean.copy_(torch.from_numpy(frames.mean(axis=0)))
        model.mel_std.copy_(torch.from_numpy(np.maximum(frames.std(axis=0), 1e-3)))
    del frames
    if init is not None:
        shared = load_init(model, init, ds.labels)
        log(f"fine-tuning from {hp['init']}: every layer, {shared} of {n_classes} output rows")
    bs = min(hp["batch_size"], len(tr_idx))
    steps = max(int(hp.get("min_steps", MIN_STEPS)), len(tr_idx) // bs)  # a tiny dataset still gets a useful number of steps per epoch
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=hp["epochs"] * steps, pct_start=0.15)
    patience = hp["patience"] or max(30, hp["epochs"] // 3)
    ema = None
    if hp.get("ema"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(hp["ema"])), use_buffers=True)
    kept = ema.module if ema is not None else model  # the weights that are validated and saved
    state = {"epoch": 0, "best_acc": -1.0, "best_epoch": 0, "best_state": None, "history": [], "train_seconds": 0.0}
    ckpt = out / ".checkpoint.pt"
    if ckpt.exists():
        try:
            c = torch.load(ckpt, map_location="cpu", weights_only=False)
            if c.get("key") != key:
                log(f"checkpoint {ckpt} belongs to another run configuration; starting afresh")
            else:
                model.load_state_dict(c["model"])
                if ema is not None and c.get("ema") is not None:
                    ema.load_state_dict(c["ema"])
                opt.load_state_dict(c["opt"])
                sched.load_state_dict(c["sched"])
                state = c["state"]
                rng.set_state(c["np_rng"])
                torch.set_rng_state(c["torch_rng"])
                log(f"resumed from {ckpt} after epoch {state['epoch']}")
        except Exception as exc:  # noqa: BLE001
            log(f"checkpoint {ckpt} unreadable ({exc}); starting afresh")
    crop = hp["crop_frames"]
    teacher = load_teacher(hp, ds.labels, exclude_fold, seed, feature_config, log) if hp.get("teacher") else None
    from nels.encoders.cnn import bf16_supported

    use_bf16 = hp.get("precision") == "bf16" or (hp.get("precision", "auto") == "auto" and bf16_supported())
    log(f"precision: {'bfloat16 autocast' if use_bf16 else 'float32'}")
    done_this_run = 0
    bar = None
    if progress and not quiet:
        from tqdm import tqdm

        bar = tqdm(total=hp["epochs"], initial=state["epoch"], desc="epochs", unit="ep")
    stopped_early = False
    while state["epoch"] < hp["epochs"]:
        if state["epoch"] - state["best_epoch"] >= patience and state["best_state"] is not None:
            stopped_early = True
            log(f"early stop: no validation gain for {patience} epochs (best epoch {state['best_epoch']})")
            break
        if max_epochs_this_run is not None and done_this_run >= max_epochs_this_run:
            break
        t0 = time.time()
        model.train()
        order = np.concatenate([tr_idx[rng.permutation(len(tr_idx))]
                                for _ in range(int(math.ceil(steps * bs / len(tr_idx))))])
        tot, nb = 0.0, 0
        for s in range(steps):
            b = order[s * bs:(s + 1) * bs]
            x = sample_crops(mels, b, rng, crop, stretch=float(hp.get("time_stretch", 0.0)))
            x, tgt = augment(x, labels_all[b], n_classes, hp, rng)
            if hp["label_smoothing"]:
                tgt = tgt * (1 - hp["label_smoothing"]) + hp["label_smoothing"] / n_classes
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits, _ = model(torch.from_numpy(x))
            loss = -(torch.from_numpy(tgt) * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
            if teacher is not None:
                loss = (1 - hp["kd_weight"]) * loss + hp["kd_weight"] * distillation_loss(
                    logits.float(), teacher_logits(teacher, x, use_bf16), hp["kd_temperature"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            tot += loss.item()
            nb += 1
        model.eval()
        kept.eval()
        val_acc = float("nan")
        if len(va_idx):
            with torch.inference_mode():
                p = clip_predictions(kept, [mels[i] for i in va_idx])
            val_acc = float((p.argmax(1) == labels_all[va_idx]).mean())
        else:
            val_acc = -tot / nb  # no validation: use (negative) training loss
        state["epoch"] += 1
        done_this_run += 1
        state["train_seconds"] += time.time() - t0
        state["history"].append({"epoch": state["epoch"], "loss": round(tot / nb, 4), "val_acc": round(val_acc, 4),
                                 "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 2)})
        if val_acc > state["best_acc"] or hp.get("select") == "last":
            state["best_acc"], state["best_epoch"] = val_acc, state["epoch"]
            state["best_state"] = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        log(f"epoch {state['epoch']}/{hp['epochs']} loss {tot / nb:.3f} val_acc {val_acc:.3f} "
            f"(best {state['best_acc']:.3f} @ {state['best_epoch']}) {time.time() - t0:.1f}s")
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"key": key, "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                    "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "state": state, "np_rng": rng.get_state(), "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, ckpt)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{tot / nb:.3f}", val=f"{val_acc:.3f}")
    if bar:
        bar.close()
    finished = state["epoch"] >= hp["epochs"] or stopped_early
    summary = {"out": str(out), "epochs_done": state["epoch"], "finished": finished,
               "best_val_acc": state["best_acc"], "best_epoch": state["best_epoch"],
               "train_seconds": round(state["train_seconds"], 1)}
    if not finished:
        log(f"stopped after epoch {state['epoch']} (checkpoint kept; re-run the same command to resume)")
        return summary
    model.load_state_dict(state["best_state"])
    model.eval()
    pooling, val_by_pool = choose_pooling(model, [mels[i] for i in va_idx], labels_all[va_idx])
    if hp["pooling"] != "validation":
        pooling = hp["pooling"]
        log(f"clip pooling fixed by the recipe: {pooling} (validation: {val_by_pool})")
    else:
        log(f"clip pooling chosen on validation: {pooling} ({val_by_pool})")
    metrics = {"validation_accuracy": round(state["best_acc"], 4), "best_epoch": state["best_epoch"],
               "validation_accuracy_by_pooling": val_by_pool,
               "epochs_run": state["epoch"], "train_seconds": round(state["train_seconds"], 1),
               "train_clips": int(len(tr_idx)), "validation_clips": int(len(va_idx)),
               # clips this model never trained on: `nels train-joint` validates on them too
               "validation_files": sorted(Path(feats.items[i].path).stem for i in va_idx),
               "skipped_clips": len(feats.skipped)}
    if len(test_idx):
        from nels.metrics import classification_metrics

        test_mels = [mels[i] for i in test_idx]
        by_pool = {}
        with torch.inference_mode():
            for pl in POOLINGS:
                p = clip_predictions(model, test_mels, pl)
                m = classification_metrics(labels_all[test_idx], p, n_classes)
                by_pool[pl] = {"accuracy": m["accuracy"], "mAP": m["mAP"]}
                log(f"held-out fold {exclude_fold} [{pl}]: accuracy {m['accuracy']:.4f}, mAP {m['mAP']:.4f}")
        metrics["test_fold"] = exclude_fold
        metrics["test"] = by_pool
    # the CLI passes the command line it was given; from the Python API, the equivalent one
    cmd = command or equivalent_command(dataset, fmt, exclude_fold, out, epochs, seed, arch, hparams)
    name = f"{out.name}-v{MODEL_VERSION}"
    extra = {"version": MODEL_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "training": {"command": cmd, "dataset": str(ds.root), "format": fmt, "exclude_fold": exclude_fold,
                          "seed": seed, "hparams": hp, "run_key": key},
             "metrics": metrics, "pooling": pooling}
    save_model(out, model, ds.labels, feature_config, arch, name, extra)
    write_model_card(out, name, ds, fmt, exclude_fold, cmd, metrics, hp, arch, pooling)
    log(f"model written to {out}")
    summary.update({"model": str(out), "metrics": metrics})
    return summary


def write_model_card(out: Path, name, ds, fmt, exclude_fold, cmd, metrics, hp, arch, pooling: str | None = None) -> None:
    esc = fmt == "esc50"
    lines = [f"# {name}", "",
             "Sound-event CNN for NELS (per-segment class probabilities + a 128-d embedding for acoustic similarity).", "",
             "## Made by", "", "```", cmd, "```", "",
             "## Data", "",
             f"- dataset: `{ds.root}` ({fmt}), {len(ds.labels)} classes"
             + (f"; fold {exclude_fold} held out (never seen in training)" if exclude_fold is not None else ""),
             f"- training clips {metrics['train_clips']}, validation clips {metrics['validation_clips']} "
             f"(drawn from the training folds), skipped clips {metrics['skipped_clips']}", "",
             "## Metrics", "",
             f"- validation accuracy (model selection): {metrics['validation_accuracy']:.4f} at epoch {metrics['best_epoch']} "
             f"of {metrics['epochs_run']}; training time {metrics['train_seconds'] / 60:.1f} min"]
    if metrics.get("validation_accuracy_by_pooling"):
        vp = metrics["validation_accuracy_by_pooling"]
        best = pooling or max(vp, key=vp.get)
        lines.append(f"- clip pooling used by `nels evaluate`: {best} "
                     f"(validation accuracy: {', '.join(f'{k} {v:.3f}' for k, v in vp.items())})")
    if "test" in metrics:
        lines += ["", f"Held-out fold {metrics['test_fold']} (clip level):", "",
                  "| clip pooling | accuracy | mAP |", "|---|---|---|"]
        for k, v in metrics["test"].items():
            lines.append(f"| {k} | {v['accuracy']:.4f} | {v['mAP']:.4f} |")
    lines += ["", "## Model", "",
              f"- architecture: {json.dumps(arch)}",
              "- input: 64-band log-mel (FeatureConfig in model.json), any length; trained on 2 s crops",
              f"- hyper-parameters: {json.dumps(hp)}", "",
              "## Licence", ""]
    if esc:
        lines.append("Trained on ESC-50 (K. J. Piczak), which is licensed CC BY-NC 3.0: these weights are fine "
                     "for research and non-commercial use, not for commercial use.")
    else:
        lines.append("Trained on a user-supplied dataset: the weights carry that dataset's licence terms.")
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
