"""`nels evaluate classification`: clip-level accuracy, per-class AP, mAP and a confusion matrix.

Protocol: clips of the held-out fold (esc50) or every clip (folders) are scored with the pooling the model
records in model.json ("pooling"): for the CNN, one pass over the whole clip ('whole'), or 2 s windows with a
1 s hop, the way the library segments audio, whose probabilities ('segments-mean-prob') or logits
('segments-mean-logit') are averaged per clip; for a head on a backbone (`nels train --backbone`), the
backbone windows of the clip's segments, whose probabilities ('windows-mean-prob') or log-probabilities
('windows-mean-logit') are averaged; for any other encoder, the mean of its segments' probabilities.
bench/RESULTS.md compares them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nels.errors import DatasetError, ModelError
from nels.metrics import class_average_precision, classification_metrics  # noqa: F401 - re-exported


def save_confusion_png(conf: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(conf)
    n = len(labels)
    size = max(6.0, 0.22 * n + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fs = 6 if n > 20 else 9
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=fs - 1,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def clip_probabilities(encoder, path, pooling: str | None = None) -> np.ndarray:
    """A clip's class probabilities through the Encoder seam, pooled the model's way: an encoder with its own
    clip pooling (`clip_probs`: a head on a backbone) pools its windows; any other averages its segments'
    probabilities (a clip with no segment holding sound is encoded whole)."""
    from nels.audio.decode import decode
    from nels.encoders.base import encode_waveform

    x = decode(path, sr=encoder.sample_rate)
    if hasattr(encoder, "clip_probs"):
        return encoder.clip_probs(x, encoder.sample_rate, pooling)
    if pooling not in (None, "segments-mean-prob"):
        raise ModelError(f"{encoder.name} scores a clip by the mean of its segments' probabilities"
                         f" ('segments-mean-prob'), not {pooling!r}")
    return encode_waveform(encoder, x, encoder.sample_rate, whole_if_empty=True).probs.mean(axis=0)


def evaluate_classification(dataset: str, fmt: str = "esc50", fold: int | None = 1, model=None,
                            out: str | None = None, cache: str | None = None,
                            pooling: str | None = None, progress: bool = True) -> dict:
    """Clip-level metrics of a model on a dataset (esc50: one fold). pooling None: the model's own choice
    (model.json "pooling", measured per model at training time), else for the CNN 'segments-mean-prob',
    'segments-mean-logit' or 'whole', for a head on a backbone 'windows-mean-prob' or 'windows-mean-logit'.

    model: a CNN folder (None/"default": the shipped one), or any encoder spec (a head folder, "head:PATH", a
    plug-in) whose labels cover the dataset's classes, scored through the Encoder seam (`clip_probabilities`)."""
    from nels.training import datasets as D
    from nels.encoders.base import DEFAULT_MODEL_DIR

    mpath = Path(model) if model not in (None, "default") else DEFAULT_MODEL_DIR
    ds = D.load_dataset(dataset, fmt)
    if fmt == "esc50":
        if fold not in ds.folds:
            raise DatasetError(f"--fold {fold}: the dataset's folds are {ds.folds}")
        ds.items = [it for it in ds.items if it.fold == fold]
    skipped: list = []
    if _is_cnn_folder(mpath):
        from nels.encoders.cnn import CNNEncoder
        from nels.training.train import predict_clips

        enc = CNNEncoder.load(mpath)
        pooling = pooling or enc.meta.get("pooling", "segments-mean-prob")
        _check_labels(enc, ds, mpath)
        feats = D.compute_features(ds, enc.feature_config, cache, log=lambda m: skipped.append(m), progress=progress)
        items = feats.items
        probs = predict_clips(enc, feats.mels, pooling)
    else:
        from nels.encoders.registry import create_encoder

        if model in (None, "default"):
            raise ModelError(f"{mpath}: no trained model there (model.json missing); train one with 'nels train'")
        enc = create_encoder(str(model))
        if not enc.labels:
            raise ModelError(f"{model}: {enc.name} has no classes to score")
        _check_labels(enc, ds, model)
        pooling = pooling or getattr(enc, "pooling", None) or "segments-mean-prob"
        items, rows = [], []
        todo = ds.items
        if progress:
            from tqdm import tqdm

            todo = tqdm(ds.items, desc="clips", unit="clip", leave=False)
        for it in todo:
            try:
                rows.append(clip_probabilities(enc, it.path, pooling))
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - an undecodable clip is skipped and reported
                skipped.append(f"skipped {it.path}: cannot decode ({exc.__class__.__name__}: {exc})")
                continue
            items.append(it)
        if not items:
            raise DatasetError(f"{ds.root}: no clip could be decoded")
        probs = np.asarray(rows, dtype=np.float32)
    model_idx = {l: i for i, l in enumerate(enc.labels)}
    y = np.array([model_idx[ds.labels[it.label]] for it in items])
    m = classification_metrics(y, probs, len(enc.labels))
    present = sorted(set(y.tolist()))
    per_class = {enc.labels[c]: m["per_class_ap"][c] for c in present}
    result = {"model": str(mpath if _is_cnn_folder(mpath) else model), "model_name": enc.name, "dataset": str(ds.root),
              "format": fmt, "fold": fold if fmt == "esc50" else None, "pooling": pooling, "n_clips": m["n_clips"],
              "accuracy": round(m["accuracy"], 4), "mAP": round(float(np.nanmean([per_class[k] for k in per_class])), 4),
              "per_class_ap": per_class, "skipped": [s for s in skipped]}
    if out:
        od = Path(out)
        od.mkdir(parents=True, exist_ok=True)
        tag = f"fold{fold}" if fmt == "esc50" else "all"
        png = od / f"confusion-{tag}.png"
        save_confusion_png(np.array(m["confusion"])[np.ix_(present, present)], [enc.labels[c] for c in present], png,
                           f"{enc.name}: {tag}, accuracy {m['accuracy']:.3f}, mAP {result['mAP']:.3f}")
        result["confusion_png"] = str(png)
        result["confusion"] = m["confusion"]
        (od / f"classification-{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _is_cnn_folder(path: Path) -> bool:
    """A folder whose model.json is the CNN's (format "nels-cnn", or a broken one the CNN loader reports)."""
    mj = path / "model.json"
    if not mj.is_file():
        return False
    try:
        return json.loads(mj.read_text(encoding="utf-8")).get("format", "nels-cnn") == "nels-cnn"
    except (ValueError, OSError, AttributeError):
        return True


def _check_labels(enc, ds, where) -> None:
    if set(ds.labels) - set(enc.labels):
        missing = sorted(set(ds.labels) - set(enc.labels))
        raise ModelError(f"{where}: the model does not know class(es) {', '.join(missing[:10])} of this dataset")
