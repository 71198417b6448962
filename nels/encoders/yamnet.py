"""YAMNet (Google; AudioSet, 521 sound classes; Apache-2.0) behind the Encoder seam, run on CPU by the LiteRT
interpreter (`ai-edge-litert`).

    create_encoder("yamnet")              # the installed weights (`nels models fetch yamnet`), else ../shared
    create_encoder("yamnet:PATH")         # a given .tflite file (or a folder holding yamnet_classification.tflite)

The model reads a 0.975 s window (15600 samples at 16 kHz, float32 in [-1, 1]) and gives 521 sigmoid scores
(`[1, 521]`, int8 inside: steps of 1/256) and, as its internal tensor `tower0/network/layer28/reduce_mean`,
its 1024-d embedding (int8, dequantised here).

Framing, exactly:

* **YAMNet's windows are the reference ones**, on one grid per clip: window k covers samples
  [7680 k, 7680 k + 15600) counted from the clip's first sample (0.975 s windows every 0.48 s). The reference
  zero-pads the last window of a clip (YAMNet's own `pad_waveform`); `reference_windows` does the same.
* **NELS's segments stay the library's 2 s windows every 1 s** (`window=2.0, hop=1.0`: ingest, tag and search
  results all point at them). A segment [s, e) is the mean of the grid windows that lie wholly inside it
  (7680 k >= s and 7680 k + 15600 <= e, in samples): a full 2 s segment holds 2 or 3 of them, starting within
  its first 1.025 s. The end-aligned tail segment of a clip (see `nels.audio.segment`) uses the same grid. A
  window lies inside one segment (two when it starts within 25 ms after a whole second, once every 12 s), so a
  clip costs ~2.08 windows per second of audio; a window shared by two segments of one batch runs once.
* A segment too short to hold a grid window (a whole clip under 0.975 s) is framed the reference way on its
  own: one window from its start, zero-padded.

Per segment: `probs` = the mean of its windows' 521 scores (independent sigmoids: they need not sum to 1),
`raw` = the mean of its windows' 1024-d embeddings, `embeddings` = `raw` L2-normalised. `labels` are YAMNet's
display names (unique; the names embedded in the .tflite, identical to the class map's `display_name`); the
class map's AudioSet ids are `encoder.mids`, index-aligned (for the AudioSet ontology). The waveform goes in
as decoded: no loudness normalisation (YAMNet was trained on raw levels).

Speed (bench/bench_yamnet.py, bench/RESULTS.md): the model is read once per process; each thread gets its own
interpreter (XNNPACK, one thread each); the embedding is made a second graph output, so XNNPACK runs the
whole graph. The interpreter releases the GIL, so `threads > 1` runs a batch's windows on that many threads.
"""
from __future__ import annotations

import csv
import itertools
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nels.encoders import installed
from nels.encoders.base import Encoded, encode_waveform, l2_normalize
from nels.errors import ModelError

SAMPLE_RATE = 16_000
WINDOW = 15_600  # samples: 0.975 s, YAMNet's input
HOP = 7_680  # samples: 0.48 s, the reference framing
N_CLASSES = 521
EMBEDDING_DIM = 1024
EMBEDDING_TENSOR = "tower0/network/layer28/reduce_mean"
CLASS_MAP = Path(__file__).resolve().parent.parent / "data" / "yamnet_class_map.csv"
MODEL_FILE = installed.KNOWN["yamnet"].file


def reference_starts(n: int) -> np.ndarray:
    """Start samples of the reference windows of an n-sample waveform: 0, 7680, ... until the waveform is
    covered (the last window zero-padded), one window for anything up to 0.975 s."""
    count = 1 if n <= WINDOW else 1 + -(-(n - WINDOW) // HOP)
    return np.arange(count, dtype=np.int64) * HOP


def reference_windows(x: np.ndarray) -> np.ndarray:
    """(m, 15600) float32: the reference framing of waveform `x` (16 kHz), the last window zero-padded."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    starts = reference_starts(x.size)
    out = np.zeros((len(starts), WINDOW), dtype=np.float32)
    for i, s in enumerate(starts):
        seg = x[s:s + WINDOW]
        out[i, :seg.size] = seg
    return out


def grid_windows(start: int, n: int) -> range:
    """Indices k of the grid windows wholly inside samples [start, start + n) of a clip."""
    first = -(-start // HOP)
    last = (start + n - WINDOW) // HOP
    return range(first, last + 1) if last >= first else range(0)


def load_labels(model_path: Path) -> list[str]:
    """The display names embedded in the .tflite (its metadata's yamnet_label_list.txt)."""
    try:
        with zipfile.ZipFile(model_path) as z:
            names = z.read("yamnet_label_list.txt").decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError):
        names = []
    if len(names) != N_CLASSES:  # a .tflite without the metadata: the shipped class map
        names = [r["display_name"] for r in _class_map()]
    return names


def _class_map() -> list[dict]:
    with open(CLASS_MAP, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ModelError("the YAMNet encoder needs the LiteRT interpreter: pip install ai-edge-litert") from None
    return Interpreter


def _with_embedding_output(model: bytes, tensor: int) -> bytes | None:
    """The model with `tensor` added to its graph outputs (so that XNNPACK, which owns every intermediate
    tensor of the graph it runs, hands it back); None when the flatbuffer schema is not available."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    sg = m.subgraphs[0]
    sg.outputs = [int(o) for o in sg.outputs] + [int(tensor)]
    b = flatbuffers.Builder(len(model) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


class YAMNetModel:
    """The .tflite read once; one interpreter per thread. `run(windows)` -> (scores (m, 521), embeddings (m, 1024))."""

    def __init__(self, path: Path):
        self.path = Path(path)
        Interpreter = _interpreter_class()
        raw = self.path.read_bytes()
        try:
            probe = Interpreter(model_content=raw, num_threads=1)
        except Exception as exc:  # noqa: BLE001 - any failure here means a broken file
            raise ModelError(f"{self.path}: not a TFLite model ({exc.__class__.__name__}: {str(exc)[:200]})") from None
        inp = probe.get_input_details()
        outs = probe.get_output_details()
        names = {d["name"]: d for d in probe.get_tensor_details()}
        if (len(inp) != 1 or list(inp[0]["shape"]) != [WINDOW] or not outs
                or list(outs[0]["shape"]) != [1, N_CLASSES] or EMBEDDING_TENSOR not in names):
            raise ModelError(f"{self.path}: not YAMNet's classification model (input [15600] float32, output"
                             f" [1, 521], tensor {EMBEDDING_TENSOR})")
        emb = names[EMBEDDING_TENSOR]
        self.emb_scale, self.emb_zero = (float(v) for v in emb["quantization"])
        self.content = _with_embedding_output(raw, emb["index"])
        self.preserve = self.content is None
        if self.content is None:
            self.content = raw
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self._lock = threading.Lock()

    def _interpreter(self):
        it = getattr(self._local, "it", None)
        if it is None:
            Interpreter = _interpreter_class()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # preserve_all_tensors "is for debugging" (only the fallback)
                it = Interpreter(model_content=self.content, num_threads=1,
                                 experimental_preserve_all_tensors=self.preserve)
            it.allocate_tensors()
            outs = it.get_output_details()
            emb = [d["index"] for d in it.get_tensor_details() if d["name"] == EMBEDDING_TENSOR][0]
            score = [d["index"] for d in outs if list(d["shape"]) == [1, N_CLASSES]][0]
            it._nels = (it.get_input_details()[0]["index"], score, emb)
            self._local.it = it
        return it

    def _run_one_thread(self, windows: np.ndarray, scores: np.ndarray, q: np.ndarray) -> None:
        it = self._interpreter()
        inp, out, emb = it._nels
        for i in range(len(windows)):
            it.set_tensor(inp, windows[i])
            it.invoke()
            scores[i] = it.get_tensor(out)[0]
            q[i] = it.get_tensor(emb).reshape(-1)

    def run(self, windows: np.ndarray | Sequence[np.ndarray], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Scores (m, 521) float32 and dequantised embeddings (m, 1024) float32 of m 15600-sample windows."""
        windows = np.ascontiguousarray(windows, dtype=np.float32).reshape(-1, WINDOW)
        m = len(windows)
        scores = np.empty((m, N_CLASSES), np.float32)
        q = np.empty((m, EMBEDDING_DIM), np.int8)
        if threads > 1 and m >= 2 * threads:
            with self._lock:
                if self._pool is None or self._pool_threads != threads:
                    self._pool = ThreadPoolExecutor(threads, thread_name_prefix="yamnet")
                    self._pool_threads = threads
                pool = self._pool
            bounds = np.linspace(0, m, threads + 1).astype(int)
            jobs = [pool.submit(self._run_one_thread, windows[a:b], scores[a:b], q[a:b])
                    for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            for j in jobs:
                j.result()
        elif m:
            self._run_one_thread(windows, scores, q)
        emb = (q.astype(np.float32) - self.emb_zero) * self.emb_scale
        return scores, emb


_MODELS: dict[str, YAMNetModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(path: Path) -> YAMNetModel:
    """One YAMNetModel per weights file per process."""
    key = str(Path(path).resolve())
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = YAMNetModel(Path(key))
        return _MODELS[key]


@dataclass
class SegmentWindows:
    """What the front end makes of one segment: its windows and their keys (stream id, grid index) so a
    window shared by two segments runs once per batch; keys are None for a segment framed on its own."""

    windows: Any  # (w, 15600) float32
    keys: list | None


class YAMNetEncoder:
    name = "yamnet-v1"  # YAMNet's TFLite classifier, windows pooled onto segments as described above
    space = "yamnet"
    dim = EMBEDDING_DIM
    sample_rate = SAMPLE_RATE
    window, hop = 2.0, 1.0  # NELS's segments
    _streams = itertools.count()

    def __init__(self, path: str | Path, threads: int = 1):
        self.model = load_model(Path(path))
        self.weights = self.model.path
        self.path = self.weights.parent  # companions (a joint space) would live beside the weights
        self.threads = int(threads)
        self.labels = load_labels(self.weights)
        cmap = _class_map()
        if [r["display_name"] for r in cmap] != self.labels:
            raise ModelError(f"{self.weights}: its class names differ from YAMNet's class map")
        self.mids = [r["mid"] for r in cmap]
        sha = installed.sha256_file(self.weights)
        self.meta = {"weights_sha256": sha, "weights": str(self.weights), "licence": "Apache-2.0",
                     "official": sha == installed.KNOWN["yamnet"].sha256}

    # -- the seam ----------------------------------------------------------------------------------------------
    def frontend(self):
        stream = next(self._streams)

        def windows_of(x: np.ndarray, start: int) -> SegmentWindows:
            x = np.asarray(x, dtype=np.float32).reshape(-1)
            ks = grid_windows(int(start), x.size)
            if not len(ks):
                return SegmentWindows(reference_windows(x), None)
            w = np.stack([x[k * HOP - start:k * HOP - start + WINDOW] for k in ks])
            return SegmentWindows(w, [(stream, k) for k in ks])

        return windows_of

    def encode_features(self, features: Sequence[SegmentWindows]) -> Encoded:
        if not features:
            return Encoded(np.zeros((0, self.dim), np.float32), np.zeros((0, N_CLASSES), np.float32),
                           list(self.labels), np.zeros((0, self.dim), np.float32))
        rows, scores, emb = self.window_outputs(features)
        probs = np.stack([scores[r].mean(axis=0) for r in rows]).astype(np.float32)
        raw = np.stack([emb[r].mean(axis=0) for r in rows]).astype(np.float32)
        return Encoded(l2_normalize(raw), probs, list(self.labels), raw)

    def window_outputs(self, features: Sequence[SegmentWindows]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """The windows behind a batch of segments: (rows, scores (m, 521), embeddings (m, 1024)), where
        rows[i] lists the indices of segment i's windows among the m unique ones (a classifier head on the
        window embeddings, `nels.encoders.head`, pools its own outputs with them)."""
        rows, index, unique = [], {}, []
        for f in features:
            r = []
            for j, w in enumerate(f.windows):
                key = f.keys[j] if f.keys is not None else None
                if key is None or key not in index:
                    if key is not None:
                        index[key] = len(unique)
                    r.append(len(unique))
                    unique.append(w)
                else:
                    r.append(index[key])
            rows.append(r)
        if not unique:
            return rows, np.zeros((0, N_CLASSES), np.float32), np.zeros((0, self.dim), np.float32)
        scores, emb = self.model.run(np.stack(unique), self.threads)
        return rows, scores, emb

    def encode(self, waveform: np.ndarray, sample_rate: int) -> Encoded:
        return encode_waveform(self, waveform, sample_rate)

    # -- YAMNet's own view ----------------------------------------------------------------------------------------
    def encode_windows(self, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Encoded:
        """The reference output: one row per 0.975 s window every 0.48 s over the whole waveform (scores,
        embeddings), with starts/ends in seconds (a window's end clipped to the waveform's)."""
        from nels.encoders.base import resample

        x = resample(np.asarray(waveform, np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
        w = reference_windows(x)
        scores, emb = self.model.run(w, self.threads)
        starts = reference_starts(x.size) / SAMPLE_RATE
        ends = np.minimum(starts + WINDOW / SAMPLE_RATE, max(x.size, 1) / SAMPLE_RATE)
        return Encoded(l2_normalize(emb), scores, list(self.labels), emb, starts, ends)


def create(arg: str | None = None) -> YAMNetEncoder:
    """The registry's factory: `create_encoder("yamnet")` (installed weights, else the development copy in
    ../shared/models/yamnet) or `create_encoder("yamnet:PATH")` (a .tflite, or a folder holding one)."""
    if arg:
        p = Path(arg).expanduser()
        if p.is_dir():
            p = p / MODEL_FILE
        if not p.is_file():
            raise ModelError(f"{p}: no such YAMNet model file")
        return YAMNetEncoder(p)
    enc = YAMNetEncoder(installed.require("yamnet"))
    if not enc.meta["official"]:
        raise ModelError(f"{enc.weights}: not the published YAMNet file (SHA-256 {enc.meta['weights_sha256'][:16]}...):"
                         f" run 'nels models fetch yamnet --force', or name a file of your own with 'yamnet:PATH'")
    return enc
