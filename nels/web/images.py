"""PNG thumbnails: a clip's spectrogram (streamed, so an hour-long clip never sits in memory) and the
per-iteration AP chart of the learning loop. numpy + PIL for the spectrogram, matplotlib (Agg) for charts."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from nels.config import SAMPLE_RATE

WIDTH, HEIGHT = 480, 96
N_FFT = 512


def _colormap() -> np.ndarray:
    try:
        from matplotlib import colormaps

        return (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    except Exception:  # pragma: no cover - matplotlib missing: grey ramp
        g = np.arange(256, dtype=np.uint8)
        return np.stack([g, g, g], axis=1)


def spectrogram_png(media: Path, duration: float, start: float | None = None, end: float | None = None) -> bytes:
    """A WIDTH x HEIGHT log-spectrogram of `media`; [start, end] (seconds) outlined when given."""
    from PIL import Image, ImageDraw

    from nels.audio.decode import stream

    total = max(int(duration * SAMPLE_RATE), N_FFT)
    hop = max(total / WIDTH, 1.0)
    win = np.hanning(N_FFT).astype(np.float32)
    cols: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float32)
    offset = 0  # absolute sample index of carry[0]
    nxt = 0.0  # absolute position of the next column
    for chunk in stream(media, chunk_seconds=30.0):
        buf = np.concatenate([carry, chunk])
        starts = []
        while int(nxt) - offset + N_FFT <= buf.size and len(cols) + len(starts) < WIDTH:
            starts.append(int(nxt) - offset)
            nxt += hop
        if starts:
            frames = np.stack([buf[s:s + N_FFT] for s in starts]) * win
            cols.extend(np.abs(np.fft.rfft(frames, axis=1)).astype(np.float32))
        keep = max(0, min(buf.size, int(nxt) - offset))
        carry, offset = buf[keep:], offset + keep
        if len(cols) >= WIDTH:
            break
    if carry.size and len(cols) < WIDTH:
        frame = np.zeros(N_FFT, dtype=np.float32)
        frame[:min(N_FFT, carry.size)] = carry[:N_FFT]
        cols.append(np.abs(np.fft.rfft(frame * win)).astype(np.float32))
    spec = np.stack(cols, axis=1) if cols else np.zeros((N_FFT // 2 + 1, 1), np.float32)  # (freq, time)
    # log-frequency rows (more room for the low end, as a mel scale does)
    freqs = np.geomspace(1, spec.shape[0] - 1, HEIGHT).astype(int)
    spec = spec[freqs][::-1]
    db = 20 * np.log10(spec + 1e-6)
    top = db.max()
    img = np.clip((db - (top - 80.0)) / 80.0, 0, 1)
    rgb = _colormap()[(img * 255).astype(np.uint8)]
    im = Image.fromarray(rgb, "RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    if start is not None and end is not None and duration > 0:
        d = ImageDraw.Draw(im)
        x0 = int(WIDTH * max(0.0, start) / duration)
        x1 = int(WIDTH * min(duration, end) / duration)
        d.rectangle([x0, 0, max(x0 + 1, x1 - 1), HEIGHT - 1], outline=(80, 220, 255), width=2)
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    return out.getvalue()


def outline_png(base_png: bytes, duration: float, start: float, end: float) -> bytes:
    """`base_png` (a `spectrogram_png` without a span) with [start, end] seconds outlined: a few ms, where a
    spectrogram costs a decode."""
    from PIL import Image, ImageDraw

    im = Image.open(io.BytesIO(base_png)).convert("RGB")
    if duration > 0:
        d = ImageDraw.Draw(im)
        x0 = int(WIDTH * min(max(0.0, start), duration) / duration)
        x1 = int(WIDTH * min(duration, max(end, 0.0)) / duration)
        d.rectangle([x0, 0, max(x0 + 1, x1 - 1), HEIGHT - 1], outline=(80, 220, 255), width=2)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def _per_class(raw) -> dict[str, float]:
    """{class: AP} from the stored JSON: a dict, a list of {label|class, ap} rows, or a plain list."""
    try:
        val = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    if isinstance(val, dict):
        return {str(k): float(v["ap"] if isinstance(v, dict) else v or 0) for k, v in val.items()}
    if isinstance(val, list):
        out = {}
        for i, v in enumerate(val):
            if isinstance(v, dict):
                out[str(v.get("label", v.get("class", i)))] = float(v.get("ap", 0) or 0)
            else:
                out[str(i)] = float(v or 0)
        return out
    return {}


def iterations_png(rows: list[dict]) -> bytes:
    """mAP per iteration for each (run, strategy), and per-class AP of the latest run/strategy as a heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90, gridspec_kw={"width_ratios": [1, 1.4]})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["strategy"]), []).append(r)
    for (run, strategy), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["iteration"])
        ax1.plot([r["iteration"] for r in rs], [r["map"] or 0 for r in rs], marker="o", label=f"{run}/{strategy}")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("mAP")
    ax1.set_title("mean AP per iteration")
    ax1.grid(alpha=0.3)
    if groups:
        ax1.legend(fontsize=7)
    latest = max(rows, key=lambda r: r["created_at"]) if rows else None
    if latest is not None:
        rs = sorted(groups[(latest["run"], latest["strategy"])], key=lambda r: r["iteration"])
        per = [_per_class(r.get("per_class")) for r in rs]
        classes = sorted({c for p in per for c in p})
        if classes:
            mat = np.array([[float(p.get(c, np.nan) or 0) for p in per] for c in classes])
            im = ax2.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax2.set_yticks(range(len(classes)))
            ax2.set_yticklabels(classes, fontsize=max(4, min(8, 400 // max(len(classes), 1))))
            ax2.set_xticks(range(len(rs)))
            ax2.set_xticklabels([r["iteration"] for r in rs])
            ax2.set_xlabel("iteration")
            fig.colorbar(im, ax=ax2, fraction=0.04, label="AP")
        ax2.set_title(f"AP per class ({latest['run']}/{latest['strategy']})")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
