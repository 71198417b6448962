"""`nels train-joint`: fit the twin towers on segment embeddings of a labelled dataset.

Segment embeddings (and class probabilities) come from the acoustic model (2 s windows, 1 s hop, as
the library indexes them) and are cached. The text side is the vocabulary (names, descriptions,
synonyms) plus the training phrasings of `nels/data/joint_phrases.json` (40 per ESC-50 class: search
queries, descriptions, sound-library and video titles): with ~8 phrases per class the text tower learnt
50 points and placed unseen wordings badly (paraphrase mAP 0.43); with ~45 it learns which directions of
the sentence space matter for sounds.

Validation never touches the test fold: clips = the acoustic model's own validation clips when its
model.json lists them (clips the CNN never trained on, so its probabilities there are honest), else a
random tenth; texts = held-out synonyms and a held-out quarter of the training phrasings (wordings the
towers never saw). Validation picks the epoch, the loss and the text tower, and fits the weight of the
joint space in fused text search (weighted reciprocal rank fusion with linguistic search), which is
stored in joint.json and makes fused the default text mode when it beats linguistic on validation.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from nels import config
from nels.errors import DatasetError, ModelError
from nels.metrics import average_precision
from nels.encoders.joint import build_towers, contrastive_loss, infonce_loss, save_joint

CACHE = config.cache_dir() / "joint"


def segment_embeddings(ds, encoder, cache_dir: Path | None = None, progress: bool = True, with_probs: bool = False):
    """(embeddings (n, d), clip index (n,), label id (n,)) for every segment of every dataset clip;
    with_probs: also the class probabilities (n, C). cache_dir None: `CACHE` (read when called, so a test can
    point it elsewhere)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE
    from tqdm import tqdm

    from nels.audio.decode import decode

    sha = getattr(encoder, "meta", {}).get("weights_sha256")
    key = hashlib.sha256(json.dumps([encoder.name, sha, str(ds.root), len(ds.items), 2]).encode()).hexdigest()[:20]
    f = cache_dir / f"{key}.npz"
    if f.exists():
        z = np.load(f)
        out = (z["emb"], z["clip"], z["label"])
        return out + (z["probs"],) if with_probs else out
    embs, probs, clips, labels = [], [], [], []
    for ci, it in enumerate(tqdm(ds.items, desc="embeddings", unit="clip", disable=not progress, file=sys.stderr)):
        try:
            r = encoder.encode(decode(it.path, sr=encoder.sample_rate), encoder.sample_rate)
        except Exception as exc:  # noqa: BLE001 - reported, never a silent wrong label
            print(f"skipped {it.path}: {exc}", file=sys.stderr)
            continue
        segs = r.starts
        if not len(segs):
            continue
        embs.append(r.embeddings)
        probs.append(r.probs if r.probs is not None else np.zeros((len(segs), 0), np.float32))
        clips += [ci] * len(segs)
        labels += [it.label] * len(segs)
    emb, clip, label = np.concatenate(embs), np.asarray(clips), np.asarray(labels)
    prob = np.concatenate(probs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(f, emb=emb, clip=clip, label=label, probs=prob)
    return (emb, clip, label, prob) if with_probs else (emb, clip, label)


def head_segment_embeddings(ds, enc, keep, val, cache_dir: Path | None = None, windows=None, progress: bool = True):
    """`segment_embeddings` (with probabilities) of a head on a backbone (`nels train --backbone`), from the
    backbone windows its training cached (`nels.training.windows.window_embeddings`, computed here if absent), so the
    backbone runs once for the head and its joint space. A segment's vector is the head's: the mean of the grid
    windows inside it, L2-normalised. Exact for every clip whose windows map onto its segments (the backbone's
    one grid per clip); any other clip, and every validation clip (`val`: their probabilities fit the fusion
    weight, and the head's late-fused CNN needs the audio), is encoded by the head itself. Only the clips of
    `keep` are returned; probabilities only for `val`'s (zeros elsewhere: training reads none)."""
    from nels.audio.decode import decode
    from nels.audio.segment import SegmentConfig, segment_array
    from nels.encoders.base import l2_normalize
    from nels.training.windows import window_embeddings

    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE
    bb = enc.backbone
    sha = getattr(enc, "meta", {}).get("weights_sha256")
    key = hashlib.sha256(json.dumps([enc.name, sha, str(ds.root), len(ds.items), sorted(map(int, keep)),
                                     sorted(map(int, val)), "windows", 1]).encode()).hexdigest()[:20]
    f = cache_dir / f"{key}.npz"
    if f.exists():
        z = np.load(f)
        return z["emb"], z["clip"], z["label"], z["probs"]
    W = windows if windows is not None else window_embeddings(ds, bb, None, (0.0, 0.0), log=lambda m: None,
                                                              progress=progress)
    rows_of = {str(it.path): W.of(i) for i, it in enumerate(W.items)}
    grid = getattr(bb, "grid_windows", None)
    if grid is None:
        from nels.encoders.yamnet import grid_windows as grid
    vset = set(map(int, val))
    embs, probs, clips, labels = [], [], [], []
    exact = encoded = 0
    n_labels = len(enc.labels)
    for ci in sorted(map(int, keep)):
        it = ds.items[ci]
        seg_emb = None
        try:
            x = decode(it.path, sr=bb.sample_rate)
        except Exception as exc:  # noqa: BLE001 - reported, never a silent wrong label
            print(f"skipped {it.path}: {exc}", file=sys.stderr)
            continue
        mine = rows_of.get(str(it.path))
        if ci in vset or mine is None:
            r = enc.encode(x, bb.sample_rate)
            seg_emb, seg_p = r.embeddings, r.probs
            encoded += 1
        else:
            segs = segment_array(x, SegmentConfig(window=enc.window, hop=enc.hop), bb.sample_rate)
            ks = [list(grid(int(round(sg.start * bb.sample_rate)), sg.audio.size)) for sg in segs]
            order: dict[int, int] = {}
            for k in (k for row in ks for k in row):
                order.setdefault(k, len(order))
            if segs and all(ks) and len(order) == len(mine):
                seg_emb = l2_normalize(np.stack([W.emb[mine[[order[k] for k in row]]].mean(axis=0) for row in ks])
                                       .astype(np.float32))
                seg_p = np.zeros((len(segs), n_labels), np.float32)
                exact += 1
            else:  # framed otherwise (a segment shorter than a window, a silent stretch): the head itself
                r = enc.encode(x, bb.sample_rate)
                seg_emb, seg_p = r.embeddings, r.probs
                encoded += 1
        if seg_emb is None or not len(seg_emb):
            continue
        embs.append(seg_emb)
        probs.append(seg_p if seg_p is not None else np.zeros((len(seg_emb), n_labels), np.float32))
        clips += [ci] * len(seg_emb)
        labels += [it.label] * len(seg_emb)
    if progress:
        print(f"segment vectors: {exact} clips from the cached backbone windows, {encoded} encoded", file=sys.stderr)
    emb, clip, label, prob = np.concatenate(embs), np.asarray(clips), np.asarray(labels), np.concatenate(probs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(f, emb=emb, clip=clip, label=label, probs=prob)
    return emb, clip, label, prob


def class_phrases(labels: list[str], vocabulary_path=None) -> tuple[list[str], np.ndarray]:
    """Every phrase of every class (name, description, synonyms), and its class id. A class the
    vocabulary lacks is an error: its text side would be only its file-system name."""
    from nels.encoders.text import load_vocabulary

    voc = load_vocabulary(vocabulary_path)
    voc.require(labels)
    phrases, owner = [], []
    for i, l in enumerate(labels):
        for p in voc.get(l).phrases():
            phrases.append(p)
            owner.append(i)
    return phrases, np.asarray(owner)


# the shipped phrasings: search queries, descriptions, titles (joint_phrases.json) and, since 2026-12-02, four more
# styles (setting, source, short, long: joint_phrases_styles.json)
DEFAULT_TRAINING_PHRASES = tuple(Path(__file__).resolve().parent.parent / "data" / f
                                 for f in ("joint_phrases.json", "joint_phrases_styles.json"))
TRAINING_PHRASES_COPY = "training_phrases.json"  # inside the joint model folder


def training_phrases(labels: list[str], path=None) -> tuple[list[str], np.ndarray]:
    """Extra training phrasings per class ({"classes": {label: [phrase, ...]}}); classes the file lacks
    simply get none. path None: the shipped files (`DEFAULT_TRAINING_PHRASES`); "" or "none": no extra
    phrasings; several files joined by "," are read in turn."""
    if path in ("", "none"):
        return [], np.zeros(0, int)
    files = [Path(f) for f in str(path).split(",") if f] if path else list(DEFAULT_TRAINING_PHRASES)
    raw: dict[str, list] = {}
    for p in files:
        if not p.exists():
            if path:
                raise DatasetError(f"{p}: training phrases file not found")
            continue
        try:
            got = json.loads(p.read_text(encoding="utf-8"))["classes"]
            assert isinstance(got, dict) and all(isinstance(v, list) for v in got.values())
        except (ValueError, KeyError, AssertionError, TypeError):
            raise DatasetError(f'{p}: expected {{"classes": {{label: [phrase, ...]}}}}') from None
        for label, qs in got.items():
            raw.setdefault(label, []).extend(qs)
    phrases, owner = [], []
    for i, l in enumerate(labels):
        for q in raw.get(l, []):
            if isinstance(q, str) and q.strip():
                phrases.append(q.strip())
                owner.append(i)
    return phrases, np.asarray(owner, dtype=int)


def validation_clips(enc, ds, keep: list[int], rng) -> np.ndarray:
    """Dataset clip indices for validation: the acoustic model's own validation clips (recorded in its
    model.json by `nels train`) that are in `keep`, else a random tenth of `keep` (at least one per class
    when possible)."""
    names = set(getattr(enc, "meta", {}).get("metrics", {}).get("validation_files") or [])
    if names:
        val = np.array([i for i in keep if Path(ds.items[i].path).stem in names], dtype=int)
        if len(val) >= len(ds.labels):
            return val
    return rng.choice(np.asarray(keep), size=max(len(ds.labels), len(keep) // 10), replace=False)


def clip_best(seg_scores: np.ndarray, seg_clip: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """(Q, n_segments) -> (Q, len(clips)): a clip scores its best segment, as search results do."""
    out = np.full((seg_scores.shape[0], len(clips)), -np.inf, dtype=np.float32)
    for j, c in enumerate(clips):
        out[:, j] = seg_scores[:, seg_clip == c].max(axis=1)
    return out


def ranking_map(clip_scores: np.ndarray, clip_labels: np.ndarray, q_owner: np.ndarray) -> float:
    """mAP of clip rankings; a clip is relevant to a query of its class."""
    aps = [average_precision((clip_labels == y)[np.argsort(-s, kind="stable")], int((clip_labels == y).sum()))
           for s, y in zip(clip_scores, q_owner)]
    return float(np.mean(aps)) if aps else 0.0


def _ranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(-s, axis=1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.broadcast_to(np.arange(s.shape[1]), s.shape).copy(), axis=1)
    return r


FUSION_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def fit_text_fusion(joint_seg: np.ndarray, ling_seg: np.ndarray, seg_clip, clips, clip_labels, q_owner,
                    rrf_k: int = 60) -> dict:
    """Validation mAP of linguistic, joint and weighted-RRF fused text search, and the joint weight
    (linguistic weighs 1) that fuses best."""
    lin = ranking_map(clip_best(ling_seg, seg_clip, clips), clip_labels, q_owner)
    jnt = ranking_map(clip_best(joint_seg, seg_clip, clips), clip_labels, q_owner)
    rl, rj = _ranks(ling_seg), _ranks(joint_seg)
    fused = {w: ranking_map(clip_best(1.0 / (rrf_k + 1 + rl) + w / (rrf_k + 1 + rj), seg_clip, clips),
                            clip_labels, q_owner) for w in FUSION_GRID}
    best = max(FUSION_GRID, key=lambda w: (round(fused[w], 4), -abs(w - 1.0)))
    return {"linguistic": round(lin, 4), "joint": round(jnt, 4),
            "fused_by_weight": {str(w): round(v, 4) for w, v in fused.items()},
            "weights": {"linguistic": 1.0, "joint": best}, "fused": round(fused[best], 4),
            "default_mode": max((("fused", fused[best]), ("joint", jnt), ("linguistic", lin)), key=lambda kv: kv[1])[0]}


def clip_map_at3(a_emb, a_clip, a_label, t_emb, t_owner, n_classes) -> float:
    """Validation MAP@3 of audio->text on clips (clip vector = mean of its segments' joint vectors)."""
    from nels.metrics import average_precision_at

    ids = np.unique(a_clip)
    cv = np.stack([a_emb[a_clip == c].mean(0) for c in ids])
    cl = np.array([a_label[a_clip == c][0] for c in ids])
    # class vector = mean of its phrases
    tv = np.stack([t_emb[t_owner == k].mean(0) for k in range(n_classes)])
    sims = cv @ tv.T
    return float(np.mean([average_precision_at(np.argsort(-s) == y, 3, 1) for s, y in zip(sims, cl)]))


def text_to_audio_map(a_emb, a_clip, a_label, q_emb, q_owner) -> float:
    """Validation mAP of text->audio: each query phrase ranks the clips (a clip = its best segment)."""
    ids = np.unique(a_clip)
    cl = np.array([a_label[a_clip == c][0] for c in ids])
    return ranking_map(clip_best(q_emb @ a_emb.T, a_clip, ids), cl, q_owner)


def fit(loss_name: str, emb, label, clip_ids, train_clips, val_clips, t_vecs, t_owner, n_classes,
        epochs: int, seed: int, hidden: int = 256, dim: int = 128, progress: bool = True,
        text_tower: str = "mlp", held_vecs=None, held_owner=None):
    """Train towers with one loss; returns (towers, best validation score, history).

    Validation (on held-out training clips): audio->text MAP@3 against the class phrases, averaged
    with text->audio mAP of held-out phrases (wordings the towers never saw), so that the chosen
    epoch and variant generalise to new words, not only to new sounds."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    # tiny matrices: one thread is faster than two fighting over the cores (measured 13 ms/step)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    towers = build_towers(emb.shape[1], t_vecs.shape[1], dim, hidden, text_tower=text_tower)
    opt = torch.optim.AdamW(towers.parameters(), lr=2e-3, weight_decay=1e-2)
    tr = np.isin(clip_ids, train_clips)
    va = np.isin(clip_ids, val_clips)
    E, Y = torch.from_numpy(emb[tr]), label[tr]
    T = torch.from_numpy(t_vecs)
    by_class = [np.flatnonzero(Y == k) for k in range(n_classes)]
    phrases_of = [np.flatnonzero(t_owner == k) for k in range(n_classes)]
    steps = max(1, len(Y) // n_classes)
    best, best_state, hist = -1.0, None, []
    for ep in tqdm(range(epochs), desc=f"joint {loss_name}", disable=not progress, file=sys.stderr):
        towers.train()
        for _ in range(steps):
            # one segment of every class, each with a random phrase of its class
            ai = np.array([rng.choice(ix) for ix in by_class if len(ix)])
            ya = Y[ai]
            ti = np.array([rng.choice(phrases_of[k]) for k in ya])
            a = towers.embed_audio(E[ai] + 0.02 * torch.randn(len(ai), E.shape[1]))
            t = towers.embed_text(T[ti])
            if loss_name == "infonce":
                loss = infonce_loss(a, t, towers.log_scale)
            else:
                loss = contrastive_loss(a, t, torch.from_numpy(ya), torch.from_numpy(t_owner[ti]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        towers.eval()
        with torch.no_grad():
            va_a = towers.embed_audio(torch.from_numpy(emb[va])).numpy()
            va_t = towers.embed_text(T).numpy()
        score = clip_map_at3(va_a, clip_ids[va], label[va], va_t, t_owner, n_classes)
        if held_vecs is not None and len(held_vecs):
            with torch.no_grad():
                hq = towers.embed_text(torch.from_numpy(held_vecs)).numpy()
            score = 0.5 * score + 0.5 * text_to_audio_map(va_a, clip_ids[va], label[va], hq, held_owner)
        hist.append(round(score, 4))
        if not progress and (ep + 1) % 10 == 0:
            print(f"joint {loss_name}: epoch {ep + 1}/{epochs}, validation MAP@3 {score:.3f}", file=sys.stderr,
                  flush=True)
        if score > best:
            best = score
            best_state = {k: v.clone() for k, v in towers.state_dict().items()}
    towers.load_state_dict(best_state)
    towers.eval()
    return towers, best, hist


def train_joint(dataset: str, fmt: str = "esc50", exclude_fold: int | None = None, model: str | None = None,
                loss: str = "both", out: str | None = None, epochs: int = 80, seed: int = 0,
                vocabulary: str | None = None, progress: bool = True, phrases: str | None = None,
                windows=None) -> dict:
    """Train the towers (see the module docstring); returns joint.json's content plus "out".

    phrases: extra training phrasings (None: the shipped nels/data/joint_phrases.json; "none": only the
    vocabulary). windows: a head's backbone windows of `dataset` (`nels.training.windows.Windows`), already in
    memory (else read from the window cache; see `head_segment_embeddings`)."""
    from nels.training.datasets import load_dataset
    from nels.encoders.base import load_encoder
    from nels.encoders.text import TextEncoder
    from nels.search import linguistic

    t0 = time.time()
    enc = load_encoder(model)
    if not enc.labels:
        raise ModelError("the joint space needs a trained acoustic model (the baseline has no classes to pair)")
    ds = load_dataset(dataset, fmt)
    labels = list(ds.labels)
    if list(enc.labels) != labels:
        raise DatasetError(f"the acoustic model {enc.name} knows other classes than {ds.root} "
                           f"({len(enc.labels)} vs {len(labels)}); train the joint space on the data the model was trained on")
    vocab_phrases, v_owner = class_phrases(labels, vocabulary)
    extra, e_owner = training_phrases(labels, phrases)
    keep = [i for i, it in enumerate(ds.items) if exclude_fold is None or it.fold != exclude_fold]
    if not keep:
        raise DatasetError("no training clips left after --exclude-fold")
    te = TextEncoder()
    rng = np.random.default_rng(seed)
    # held out for validation: the last 2 synonyms of each class and a quarter of its training phrasings
    held_v = np.zeros(len(vocab_phrases), bool)
    held_e = np.zeros(len(extra), bool)
    for k in range(len(labels)):
        idx = np.flatnonzero(v_owner == k)
        if len(idx) > 4:
            held_v[idx[-2:]] = True
        idx = np.flatnonzero(e_owner == k)
        held_e[rng.permutation(idx)[:len(idx) // 4]] = True
    all_phrases = vocab_phrases + extra
    owner = np.concatenate([v_owner, e_owner]).astype(int)
    held = np.concatenate([held_v, held_e])
    t_all = te.encode(all_phrases)
    t_vecs, t_train_owner = t_all[~held], owner[~held]
    val = validation_clips(enc, ds, keep, rng)
    if hasattr(enc, "net") and hasattr(getattr(enc, "backbone", None), "window_outputs"):
        # a head on a backbone: its segment vectors from the backbone windows its training cached
        emb, clip, label, probs = head_segment_embeddings(ds, enc, keep, val, progress=progress, windows=windows)
    else:
        emb, clip, label, probs = segment_embeddings(ds, enc, progress=progress, with_probs=True)
    m = np.isin(clip, keep)
    emb, clip, label, probs = emb[m], clip[m], label[m], probs[m]
    missing = sorted(set(range(len(labels))) - set(label.tolist()))
    if missing:
        raise DatasetError("no audio for class(es): " + ", ".join(labels[i] for i in missing))
    train = np.setdiff1d(np.unique(clip), val)
    results = {}
    losses = ["contrastive", "infonce"] if loss == "both" else [loss]
    fitted = {}
    for ln in losses:
        for tt in ("mlp", "linear"):
            towers, score, hist = fit(ln, emb, label, clip, train, val, t_vecs, t_train_owner, len(labels), epochs,
                                      seed, progress=progress, text_tower=tt, held_vecs=t_all[held],
                                      held_owner=owner[held])
            fitted[f"{ln}/{tt}"] = towers
            results[f"{ln}/{tt}"] = {"validation": round(score, 4), "history": hist}
    chosen = max(results, key=lambda k: results[k]["validation"])
    towers = fitted[chosen]
    # fused text search: fit the joint weight on validation clips and held-out wordings
    import torch

    va = np.isin(clip, val)
    with torch.no_grad():
        a_val = towers.embed_audio(torch.from_numpy(emb[va])).numpy()
        q_joint = towers.embed_text(torch.from_numpy(t_all[held])).numpy()
    # the linguistic scores exactly as search makes them (hierarchy-aware concepts over the search vocabulary)
    from nels.encoders.concepts import ConceptSpace, search_vocabulary

    space = ConceptSpace(labels, search_vocabulary(vocabulary), te)
    sims, _ = space.similarity(t_all[held])
    qw = linguistic.label_weights(sims)
    ling = np.stack([linguistic.score(qw[i], probs[va], space.members) for i in range(len(qw))])
    clips_val = np.unique(clip[va])
    clip_labels = np.array([label[clip == c][0] for c in clips_val])
    fusion = fit_text_fusion(q_joint @ a_val.T, ling, clip[va], clips_val, clip_labels, owner[held])
    from nels.encoders.joint import joint_dir_for

    out_dir = Path(out) if out else joint_dir_for(enc)
    meta = {"name": f"joint-{chosen.replace('/', '-')}-{enc.name}", "text_tower": chosen.split("/")[1], "audio_model": enc.name, "audio_space": enc.space,
            "audio_model_sha256": getattr(enc, "meta", {}).get("weights_sha256"),
            "audio_dim": int(emb.shape[1]), "text_dim": int(t_vecs.shape[1]), "dim": 128, "hidden": 256,
            "loss": chosen.split("/")[0], "losses": results, "labels": labels, "exclude_fold": exclude_fold,
            "dataset": str(dataset), "seed": seed, "epochs": epochs, "train_seconds": round(time.time() - t0, 1),
            "training_text": {"vocabulary_phrases": int((~held_v).sum()), "extra_phrases": int((~held_e).sum()),
                              "held_out_phrases": int(held.sum()),
                              "extra_file": None if phrases in ("", "none") else TRAINING_PHRASES_COPY},
            "validation_clips": int(len(np.unique(clip[va]))),
            "fusion": {"text": fusion},
            "command": "nels " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("nels") else None,
            **({"feature_config": enc.feature_config.to_dict()} if hasattr(enc, "feature_config") else {})}
    from nels.encoders.text import DEFAULT_VOCABULARY

    save_joint(out_dir, towers, meta, Path(vocabulary) if vocabulary else DEFAULT_VOCABULARY)
    if phrases not in ("", "none"):  # the model folder keeps the text it was trained on
        texts, owners = training_phrases(labels, phrases)  # the union of every file read, per class
        merged: dict[str, list[str]] = {}
        for t, o in zip(texts, owners):
            merged.setdefault(labels[o], []).append(t)
        (out_dir / TRAINING_PHRASES_COPY).write_text(json.dumps({"version": 1, "classes": merged}, indent=1,
                                                                ensure_ascii=False), encoding="utf-8")
    return {k: v for k, v in meta.items() if k != "labels"} | {"out": str(out_dir)}
