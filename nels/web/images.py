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


# matplotlib's "magma" at nine points (interpolated to 256 entries): importing matplotlib costs a server ~0.3 s
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122), (229, 80, 100),
                   (251, 135, 97), (254, 194, 135), (252, 253, 191)], np.float64)
_CMAP: list = []


def _colormap() -> np.ndarray:
    if not _CMAP:
        x = np.linspace(0, 1, 256)
        knots = np.linspace(0, 1, len(_MAGMA))
        _CMAP.append(np.stack([np.interp(x, knots, _MAGMA[:, i]) for i in range(3)], axis=1).round().astype(np.uint8))
    return _CMAP[0]


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


# -- the clip page's views: any range of a clip, waveform over spectrogram -------------------------------------
VIEW_MAX_WIDTH, VIEW_MAX_HEIGHT = 2400, 480
VIEW_FRAMES_PER_COLUMN = 4
SPARSE_SECONDS_PER_COLUMN = 0.5  # a wider range per pixel column (10 min over 1200 px) is sampled, not decoded whole
_PCM_SCALE = {"s16": 1 / 32768, "s16p": 1 / 32768, "s32": 1 / 2 ** 31, "s32p": 1 / 2 ** 31, "flt": 1.0, "fltp": 1.0}  # FFT frames averaged per pixel column (a 1-hour overview is not a "barcode")



def _open_audio(media):
    """An av container of `media`; nels.errors.DecodeError when the file cannot be opened."""
    import av

    from nels.errors import DecodeError

    try:
        return av.open(str(media))
    except Exception as exc:  # noqa: BLE001 - av raises many classes
        raise DecodeError(f"{Path(media).name}: not a readable audio file ({exc.__class__.__name__})") from None

def read_range(media: Path, start: float, end: float | None, sr: int = SAMPLE_RATE, chunk_seconds: float = 30.0):
    """Mono float32 chunks of `media` from `start` to `end` seconds (None: the end of the file), at `sr` Hz.

    Seeks to `start` (decoding only the range: a minute of an hour-long file costs a minute's decode), then trims
    to the exact sample. Raises nels.errors.DecodeError for a file that cannot be read."""
    import av

    from nels.errors import DecodeError

    container = _open_audio(media)
    try:
        st = container.streams.audio[0]
        st.thread_type = "AUTO"
        if start > 0 and st.time_base:
            try:
                container.seek(int(start / st.time_base), stream=st, backward=True)
            except av.FFmpegError:  # not seekable: decode from the beginning
                container.seek(0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        ctx = st.codec_context
        # already mono PCM at `sr` (FLAC/WAV media of 16 kHz sources): converted in numpy, several times cheaper
        direct = ctx is not None and ctx.sample_rate == sr and ctx.channels == 1
        first = int(round(start * sr))
        last = None if end is None else int(round(end * sr))
        pos = None  # absolute sample index of the next output sample
        buf, held, chunk = [], 0, int(chunk_seconds * sr)

        def frames():
            for frame in container.decode(st):
                yield frame
            yield None  # flush the resampler

        for frame in frames():
            if frame is not None and pos is None:
                pos = int(round(float(frame.pts * frame.time_base) * sr)) if frame.pts is not None else 0
            if frame is not None and direct and frame.sample_rate == sr and frame.format.name in _PCM_SCALE:
                outs = [frame.to_ndarray().reshape(-1).astype(np.float32) * _PCM_SCALE[frame.format.name]]
            else:
                outs = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
            for x in outs:
                x = x.astype(np.float32, copy=False)
                lo = max(0, first - pos)
                hi = x.size if last is None else min(x.size, last - pos)
                if hi > lo:
                    buf.append(x[lo:hi])
                    held += hi - lo
                pos += x.size
                if held >= chunk:
                    yield np.concatenate(buf)
                    buf, held = [], 0
            if last is not None and pos is not None and pos >= last:
                break
        if held:
            yield np.concatenate(buf)
    except av.FFmpegError as exc:
        raise DecodeError(f"{Path(media).name}: corrupt audio ({exc.__class__.__name__})") from None
    finally:
        container.close()


def sample_columns(media: Path, start: float, end: float, width: int, block: int, sr: int = SAMPLE_RATE):
    """For each of `width` columns of [start, end], `block` samples around the column's middle, by seeking
    (an hour's overview decodes 1200 short blocks, about a tenth of the file). Yields (column, samples); a column
    whose block cannot be read is left out. Raises DecodeError when the file cannot be opened or seeked."""
    import av

    from nels.errors import DecodeError

    container = _open_audio(media)
    try:
        st = container.streams.audio[0]
        ctx = st.codec_context
        direct = ctx is not None and ctx.sample_rate == sr and ctx.channels == 1
        resampler = None
        span = end - start
        for c in range(width):
            centre = start + span * (c + 0.5) / width
            first = max(0, int(round(centre * sr)) - block // 2)
            container.seek(int(max(0.0, first / sr - 0.05) / st.time_base), stream=st, backward=True)
            if not direct:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)  # no state across seeks
            got, pos = [], None
            for frame in container.decode(st):
                if pos is None:
                    pos = int(round(float(frame.pts * frame.time_base) * sr)) if frame.pts is not None else first
                if direct and frame.format.name in _PCM_SCALE:
                    xs = [frame.to_ndarray().reshape(-1).astype(np.float32) * _PCM_SCALE[frame.format.name]]
                else:
                    xs = [o.to_ndarray().reshape(-1).astype(np.float32) for o in resampler.resample(frame)]
                for x in xs:
                    lo = max(0, first - pos)
                    if lo < x.size:
                        got.append(x[lo:lo + block - sum(g.size for g in got)])
                    pos += x.size
                if sum(g.size for g in got) >= block:
                    break
            if got:
                yield c, np.concatenate(got)
    except av.FFmpegError as exc:
        raise DecodeError(f"{Path(media).name}: cannot sample ({exc.__class__.__name__})") from None
    finally:
        container.close()


def view_png(media: Path, start: float, end: float, width: int = 1200, height: int = 160) -> bytes:
    """A `width` x `height` picture of `media` between `start` and `end` seconds: the waveform envelope (min/max
    per pixel column) in the top quarter, a log-frequency spectrogram below (each column the mean power of
    VIEW_FRAMES_PER_COLUMN frames spread over its time span). Streams the range: memory is O(width), not O(audio).
    A range of more than SPARSE_SECONDS_PER_COLUMN per column (an hour's overview) is sampled instead: a block of
    VIEW_FRAMES_PER_COLUMN frames at each column's middle, by seeking; its waveform is then the blocks' envelope.
    """
    width = int(min(max(width, 16), VIEW_MAX_WIDTH))
    height = int(min(max(height, 32), VIEW_MAX_HEIGHT))
    span = max(int(round((end - start) * SAMPLE_RATE)), 1)
    edges = np.linspace(0, span, width + 1)  # column c covers samples [edges[c], edges[c+1]) of the range
    k = VIEW_FRAMES_PER_COLUMN
    # frame starts: k per column, spread over the column (frames overlap their neighbours in short ranges)
    offs = (np.arange(k) + 0.5) / k
    centres = (edges[:-1, None] + offs[None, :] * np.diff(edges)[:, None]).reshape(-1)
    fstarts = np.clip(np.round(centres - N_FFT / 2).astype(np.int64), 0, max(span - N_FFT, 0))
    fcol = np.repeat(np.arange(width), k)
    power = np.zeros((width, N_FFT // 2 + 1), np.float64)
    counts = np.zeros(width, np.int64)
    lo = np.full(width, np.inf, np.float32)
    hi = np.full(width, -np.inf, np.float32)
    win = np.hanning(N_FFT).astype(np.float32)
    if (end - start) / width > SPARSE_SECONDS_PER_COLUMN:
        try:
            for c, x in sample_columns(media, start, end, width, k * N_FFT):
                n = x.size // N_FFT
                if n:
                    frames = x[:n * N_FFT].reshape(n, N_FFT) * win
                    power[c] = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
                    counts[c] = n
                lo[c], hi[c] = (x.min(), x.max()) if x.size else (np.inf, -np.inf)
            return _render(power, counts, lo, hi, width, height)
        except Exception:  # noqa: BLE001 - a file that cannot seek: decoded whole below
            power[:], counts[:], lo[:], hi[:] = 0, 0, np.inf, -np.inf
    carry = np.zeros(0, np.float32)
    offset = 0  # range sample index of carry[0]
    nxt = 0  # next frame (index into fstarts) to compute
    bounds = np.round(edges).astype(np.int64)
    for chunk in read_range(media, start, end):
        # waveform: min/max of the chunk's samples per column
        c0, n = offset + carry.size, chunk.size
        cols = np.searchsorted(bounds, [c0, c0 + n], side="right") - 1
        a, b = max(int(cols[0]), 0), min(int(cols[1]), width - 1)
        if n and a <= b:
            idx = np.clip(bounds[a:b + 1] - c0, 0, n)
            idx[0] = 0
            keep = idx < n
            idx, cs = idx[keep], np.arange(a, b + 1)[keep]
            if idx.size:
                np.minimum.at(lo, cs, np.minimum.reduceat(chunk, idx))
                np.maximum.at(hi, cs, np.maximum.reduceat(chunk, idx))
        buf = np.concatenate([carry, chunk])
        j = nxt
        while j < fstarts.size and fstarts[j] - offset + N_FFT <= buf.size:
            j += 1
        if j > nxt:
            frames = np.stack([buf[s - offset:s - offset + N_FFT] for s in fstarts[nxt:j]]) * win
            p = np.abs(np.fft.rfft(frames, axis=1)) ** 2
            np.add.at(power, fcol[nxt:j], p)
            np.add.at(counts, fcol[nxt:j], 1)
            nxt = j
        keep_from = int(fstarts[nxt]) - offset if nxt < fstarts.size else buf.size
        keep_from = min(max(keep_from, 0), buf.size)
        carry, offset = buf[keep_from:], offset + keep_from
    if nxt < fstarts.size and carry.size:  # frames running past the end: zero-padded
        for s in fstarts[nxt:]:
            fr = np.zeros(N_FFT, np.float32)
            seg = carry[max(0, s - offset):max(0, s - offset) + N_FFT]
            fr[:seg.size] = seg
            power[fcol[nxt]] += np.abs(np.fft.rfft(fr * win)) ** 2
            counts[fcol[nxt]] += 1
            nxt += 1
    return _render(power, counts, lo, hi, width, height)


def _render(power, counts, lo, hi, width: int, height: int) -> bytes:
    """The PNG of a view: per-column mean power (width, bins) as a log-frequency spectrogram, min/max as the
    waveform strip."""
    from PIL import Image

    spec = (power / np.maximum(counts, 1)[:, None]).T  # (freq, time)
    wave_h = max(height // 4, 8)
    spec_h = height - wave_h
    rows = np.geomspace(1, spec.shape[0] - 1, spec_h).astype(int)
    db = 10 * np.log10(spec[rows][::-1] + 1e-12)
    top = db.max() if np.isfinite(db).any() else 0.0
    img = np.clip((db - (top - 80.0)) / 80.0, 0, 1)
    img[:, counts == 0] = 0.0
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[wave_h:] = _colormap()[(img * 255).astype(np.uint8)]
    # waveform: a light envelope on the dark strip, scaled to the range's loudest sample
    rgb[:wave_h] = (24, 24, 32)
    have = np.isfinite(lo) & np.isfinite(hi)
    peak = float(max(np.abs(lo[have]).max(initial=0), np.abs(hi[have]).max(initial=0))) or 1.0
    mid = (wave_h - 1) / 2
    y0 = np.where(have, np.round(mid - hi / peak * mid), mid).astype(int).clip(0, wave_h - 1)
    y1 = np.where(have, np.round(mid - lo / peak * mid), mid).astype(int).clip(0, wave_h - 1)
    yy = np.arange(wave_h)[:, None]
    mask = (yy >= y0[None, :]) & (yy <= y1[None, :]) & have[None, :]
    rgb[:wave_h][mask] = (140, 200, 255)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", compress_level=3)
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
