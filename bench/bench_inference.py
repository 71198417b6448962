"""Inference throughput of the sound-event CNN on ONE core: decode + log-mel + model, in x real time.

    python bench/bench_inference.py [--model DIR] [--clips 200] [--batch 64] [--json]

ESC-50 clips (5 s FLAC) are decoded with PyAV, cut into the library's 2 s windows with a 1 s hop
(4 windows per clip), log-melled and encoded in batches of `--batch` windows. Two front-end variants:

* ``sliding``: what ingest does (`SlidingLogMel`): each 2 s window normalised on its own, the FFT frames
  two overlapping windows share computed once (output identical to ``per-segment``);
* ``per-segment``: each 2 s window is log-melled on its own (as `nels.encoders.base.encode_audio` does
  for query windows);
* ``clip-sliced``: the clip is log-melled once and the windows are slices of it (10 ms hop: exact
  frame alignment), which halves the front-end work for overlapping windows.

x real time = seconds of audio (clip durations, not window durations) / wall seconds. The CPU-time
figure (process CPU seconds instead of wall seconds) is also printed: on a machine shared with other
jobs it is the better estimate of what one dedicated core does.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    from nels.audio.decode import decode
    from nels.audio.features import SlidingLogMel, logmel
    from nels.audio.segment import segment_array
    from nels.encoders.cnn import CNNEncoder, segment_mels
    from nels.encoders.base import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "esc50"))
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="2 s windows per model call")
    ap.add_argument("--repeats", type=int, default=3, help="best of N timed passes")
    ap.add_argument("--precision", default="both", choices=["both", "auto", "fp32", "bf16"],
                    help="model precision: both (fp32 and, where the CPU has it natively, bf16), auto, fp32, bf16")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    enc = CNNEncoder.load(a.model)
    files = sorted((Path(a.dataset) / "audio").glob("*.flac"))[: a.clips]
    if not files:
        print(f"no clips under {a.dataset}/audio", file=sys.stderr)
        return 2
    cfg = enc.feature_config

    def run(mode: str):
        t_dec = t_feat = t_model = 0.0
        audio_s = 0.0
        pending: list[np.ndarray] = []
        n_win = 0

        def flush():
            nonlocal t_model, pending, n_win
            if pending:
                t = time.perf_counter()
                enc.encode_mels(pending)
                t_model += time.perf_counter() - t
                n_win += len(pending)
                pending = []

        t_all = time.perf_counter()
        c_all = time.process_time()
        for f in files:
            t = time.perf_counter()
            audio = decode(f)
            t_dec += time.perf_counter() - t
            audio_s += audio.size / cfg.sr
            t = time.perf_counter()
            if mode == "per-segment":
                mels = [logmel(s.audio, cfg) for s in segment_array(audio)]
            elif mode == "sliding":
                sl = SlidingLogMel(cfg)
                mels = [sl(s.audio, int(round(s.start * cfg.sr))) for s in segment_array(audio)]
            else:
                mels = segment_mels(logmel(audio, cfg))
            t_feat += time.perf_counter() - t
            pending.extend(mels)
            if len(pending) >= a.batch:
                flush()
        flush()
        wall = time.perf_counter() - t_all
        cpu = time.process_time() - c_all
        return {"mode": mode, "clips": len(files), "windows": n_win, "audio_seconds": round(audio_s, 1),
                "wall_seconds": round(wall, 3), "x_realtime": round(audio_s / wall, 1),
                "cpu_seconds": round(cpu, 3), "x_realtime_cpu_time": round(audio_s / cpu, 1),
                "decode_ms_per_clip": round(1000 * t_dec / len(files), 3),
                "features_ms_per_clip": round(1000 * t_feat / len(files), 3),
                "model_ms_per_window": round(1000 * t_model / max(1, n_win), 3),
                "model_only_x_realtime": round(audio_s / max(t_model, 1e-9), 1)}

    from nels.encoders.cnn import bf16_supported

    precisions = ["fp32", "bf16"] if (a.precision == "both" and bf16_supported()) else (
        ["bf16" if bf16_supported() else "fp32"] if a.precision == "auto" else [a.precision])
    results = []
    for prec in precisions:
        enc.bf16 = prec == "bf16"
        run("clip-sliced")  # warm-up (file cache, allocator, oneDNN kernels)
        for mode in ("sliding", "per-segment", "clip-sliced"):
            best = min((run(mode) for _ in range(a.repeats)), key=lambda r: r["wall_seconds"])
            best["precision"] = prec
            results.append(best)
    out = {"model": enc.name, "threads": torch.get_num_threads(), "batch_windows": a.batch, "results": results}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"model {enc.name}, 1 thread, batches of {a.batch} x 2 s windows (1 s hop), {len(files)} ESC-50 clips")
        for r in results:
            print(f"  {r['precision']} {r['mode']:12s}: {r['x_realtime']:7.1f}x real time (wall), {r['x_realtime_cpu_time']:7.1f}x (CPU time)  (decode {r['decode_ms_per_clip']:.2f} ms/clip, "
                  f"features {r['features_ms_per_clip']:.2f} ms/clip, model {r['model_ms_per_window']:.3f} ms/window; "
                  f"model alone {r['model_only_x_realtime']:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
