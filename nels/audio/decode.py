"""Decoding with PyAV (bundled FFmpeg): every container and codec FFmpeg reads, no system ffmpeg needed.

`stream` yields fixed-size chunks so an hour of audio never sits in memory; `decode` is the
convenience for short clips and queries.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Iterator

import numpy as np

from nels.config import MAX_SAMPLE_AMPLITUDE, MIN_SOURCE_RATE, SAMPLE_RATE
from nels.errors import DecodeError

PathOrFile = str | os.PathLike | BinaryIO | bytes


def _open(src: PathOrFile):
    import av

    if isinstance(src, bytes):
        src = io.BytesIO(src)
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise DecodeError(f"{src}: no such file")
        if os.path.getsize(src) == 0:
            raise DecodeError(f"{src}: empty file (0 bytes)")
    try:
        container = av.open(src if not isinstance(src, os.PathLike) else os.fspath(src), mode="r")
    except Exception as exc:  # av raises many classes (InvalidDataError, FFmpegError...)
        raise DecodeError(f"{_name(src)}: not a readable audio file ({exc.__class__.__name__}: {exc})") from None
    if not container.streams.audio:
        container.close()
        raise DecodeError(f"{_name(src)}: no audio stream")
    return container


_SCALE = {"s16": 1 / 32768, "s16p": 1 / 32768, "s32": 1 / 2 ** 31, "s32p": 1 / 2 ** 31, "flt": 1.0, "fltp": 1.0,
          "dbl": 1.0, "dblp": 1.0}
_FLOAT = {"flt", "fltp", "dbl", "dblp"}  # sample formats that can hold NaN, infinity or any amplitude


def check_samples(a: np.ndarray, what: str = "<audio>") -> None:
    """Refuse samples no microphone or mixer produces: NaN or infinity ("non-finite samples"), or a peak over
    MAX_SAMPLE_AMPLITUDE x full scale ("absurd amplitude"). Such audio otherwise turns into NaN features,
    NaN class probabilities and a catalogue that refuses them: a clear DecodeError instead."""
    if not a.size:
        return
    peak = float(np.max(np.abs(a)))  # NaN propagates through max, infinity stays infinite
    if not np.isfinite(peak):
        raise DecodeError(f"{what}: non-finite samples ({'NaN' if np.isnan(peak) else 'infinity'} in the audio);"
                          f" refused")
    if peak > MAX_SAMPLE_AMPLITUDE:
        raise DecodeError(f"{what}: absurd amplitude (peak {peak:.3g} x full scale, the limit is"
                          f" {MAX_SAMPLE_AMPLITUDE:g}); refused")


# container (PyAV/FFmpeg demuxer name, first alias) -> the extension its media file is stored under
CONTAINER_EXTENSIONS = {"wav": ".wav", "w64": ".w64", "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3", "mov": ".m4a",
                        "mp4": ".m4a", "matroska": ".mka", "webm": ".webm", "aac": ".aac", "aiff": ".aiff",
                        "caf": ".caf", "amr": ".amr", "asf": ".wma", "avi": ".avi", "au": ".au", "wv": ".wv",
                        "ape": ".ape", "tta": ".tta", "voc": ".voc", "mpeg": ".mpg", "3gp": ".3gp"}
WEBM_CODECS = {"opus", "vorbis"}


def container_extension(src: str | os.PathLike) -> str:
    """The file extension of the format FFmpeg detects in `src` (by content, not by name): what a stored media
    file is called, so that a WAV named x.html is stored, and served, as .wav. '.bin' when unknown."""
    container = _open(src)
    try:
        return _extension(container)
    finally:
        container.close()


def _extension(container) -> str:
    name = (container.format.name or "").split(",")[0]
    ext = CONTAINER_EXTENSIONS.get(name, ".bin")
    if ext == ".mka" and all(s.codec_context.name in WEBM_CODECS for s in container.streams.audio):
        ext = ".webm"
    return ext


def _name(src) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<upload>"


def stream(src: PathOrFile, sr: int = SAMPLE_RATE, chunk_seconds: float = 30.0,
           info: dict | None = None) -> Iterator[np.ndarray]:
    """Yield the audio of `src` as float32 mono chunks at `sr` Hz.

    Parameters
    ----------
    src : path, file object or bytes
        Anything FFmpeg can demux (wav, flac, ogg, opus, mp3, m4a, webm, video files...).
    sr : int
        Output sample rate; FFmpeg's resampler does the conversion.
    chunk_seconds : float
        Size of the yielded chunks (the last may be shorter). Memory stays O(chunk), not O(file).
    info : dict, optional
        Filled with "extension": the file extension of the container format FFmpeg detected (as
        `container_extension` gives it), so that a caller learns it without opening the file twice.

    Raises
    ------
    DecodeError
        If the file is missing, empty, corrupt, has no audio stream, or decodes to nothing.
    """
    import av

    container = _open(src)
    chunk = int(chunk_seconds * sr)
    try:
        if info is not None:
            info["extension"] = _extension(container)
        astream = container.streams.audio[0]
        astream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        ctx = astream.codec_context
        if ctx is None:  # a codec FFmpeg does not know (a mangled WAV format tag)
            raise DecodeError(f"{_name(src)}: no decoder for its audio stream")
        if ctx.sample_rate and ctx.sample_rate < MIN_SOURCE_RATE:  # 100 KB at 1 Hz would be 14 hours of audio
            raise DecodeError(f"{_name(src)}: implausible sample rate ({ctx.sample_rate} Hz); refused")
        # already 16 kHz mono integer/float PCM (ESC-50 FLAC, most WAVs): convert in numpy, 5x cheaper
        direct = (ctx.sample_rate == sr and ctx.channels == 1 and ctx.format is not None
                  and ctx.format.name in _SCALE)
        buf: list[np.ndarray] = []
        held = 0
        total = 0

        def frames():
            try:
                for frame in container.decode(astream):
                    fmt = frame.format.name
                    if direct and frame.sample_rate == sr and fmt in _SCALE:
                        pcm = frame.to_ndarray().reshape(-1)
                        if fmt in _FLOAT:
                            check_samples(pcm, _name(src))
                        yield pcm.astype(np.float32) * _SCALE[fmt]
                    else:
                        if fmt in _FLOAT:  # checked before the resampler mixes NaN into its neighbours
                            check_samples(frame.to_ndarray(), _name(src))
                        yield from (f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            except av.error.EOFError:
                pass
            except av.FFmpegError as exc:
                if total == 0:
                    raise DecodeError(f"{_name(src)}: corrupt audio ({exc})") from None
                # A truncated tail (partial download): keep what decoded cleanly.
            if not direct:
                yield from (f.to_ndarray().reshape(-1) for f in resampler.resample(None))

        for pcm in frames():
            pcm = pcm.astype(np.float32, copy=False)
            buf.append(pcm)
            held += pcm.size
            total += pcm.size
            while held >= chunk:
                joined = np.concatenate(buf)
                yield joined[:chunk]
                rest = joined[chunk:]
                buf, held = ([rest] if rest.size else []), rest.size
        if held:
            yield np.concatenate(buf)
        if total == 0:
            raise DecodeError(f"{_name(src)}: decodes to zero samples")
    except (av.FFmpegError, ValueError) as exc:  # the resampler's flush, a sample format numpy cannot take...
        raise DecodeError(f"{_name(src)}: corrupt audio ({exc.__class__.__name__}: {exc})") from None
    finally:
        container.close()


def decode(src: PathOrFile, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode a whole file (or its first `max_seconds`) to one float32 mono array at `sr` Hz."""
    parts, n = [], 0
    limit = None if max_seconds is None else int(max_seconds * sr)
    for part in stream(src, sr=sr):
        parts.append(part)
        n += part.size
        if limit is not None and n >= limit:
            break
    audio = np.concatenate(parts)
    return audio[:limit] if limit is not None else audio


def probe_duration(src: str | os.PathLike) -> float | None:
    """Container-declared duration in seconds, without decoding (None when the container does not say)."""
    container = _open(src)
    try:
        if container.duration:
            return container.duration / 1_000_000
        s = container.streams.audio[0]
        if s.duration and s.time_base:
            return float(s.duration * s.time_base)
        return None
    finally:
        container.close()
