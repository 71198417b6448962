"""YAMNet on CPU: the model alone, the encoder (decode + framing + model + pooling) and ingest, against NELS's own
CNN in the same run, on ESC-50 clips; x real time on one core. Also the fast-path choices (how the embedding is
read, XNNPACK or not) and interpreter threads (one interpreter per thread: needs more than one core).

    python bench/bench_yamnet.py [--clips 400] [--weights ../shared/models/yamnet/yamnet_classification.tflite]

Needs the YAMNet weights (installed with `nels models fetch yamnet`, or ../shared/models/yamnet) and ESC-50.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings

from common import esc50, one_core

ALL_CORES = sorted(os.sched_getaffinity(0))
one_core()

import numpy as np  # noqa: E402

from nels.audio.decode import decode  # noqa: E402
from nels.audio.segment import segment_array  # noqa: E402
from nels.encoders.base import create_encoder, encode_segments  # noqa: E402
from nels.encoders.yamnet import EMBEDDING_TENSOR, YAMNetEncoder, reference_windows  # noqa: E402
from nels.ingest.runner import IngestOptions, ingest  # noqa: E402
from nels.library import Library  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return "unknown CPU"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench_model_variants(weights, windows: np.ndarray) -> dict:
    """ms per window for ways of running the interpreter (one thread)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from nels.encoders.yamnet import load_model

    model = load_model(weights)
    variants = {
        "XNNPACK, embedding as a 2nd graph output (NELS)": dict(model_content=model.content),
        "XNNPACK, experimental_preserve_all_tensors": dict(model_path=str(weights), experimental_preserve_all_tensors=True),
        "XNNPACK, scores only (no embedding)": dict(model_path=str(weights)),
        "no XNNPACK (builtin kernels), 2nd output": dict(
            model_content=model.content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
    }
    out = {}
    for name, kw in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            it = Interpreter(num_threads=1, **kw)
        it.allocate_tensors()
        inp = it.get_input_details()[0]["index"]
        emb = [d["index"] for d in it.get_tensor_details() if d["name"] == EMBEDDING_TENSOR][0]
        want_emb = "scores only" not in name
        for w in windows[:20]:
            it.set_tensor(inp, w)
            it.invoke()
        t = time.process_time()
        for w in windows:
            it.set_tensor(inp, w)
            it.invoke()
            it.get_tensor(it.get_output_details()[0]["index"])
            if want_emb:
                it.get_tensor(emb)
        out[name] = round((time.process_time() - t) / len(windows) * 1000, 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--weights", default=None, help="a YAMNet .tflite (default: the installed or shared copy)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    a = ap.parse_args()
    spec = f"yamnet:{a.weights}" if a.weights else "yamnet"
    yam = create_encoder(spec)
    cnn = create_encoder("default")
    files = sorted(str(p) for p in (esc50() / "audio").iterdir())[: a.clips]
    res = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M"), "clips": len(files),
           "load_average": [round(v, 2) for v in os.getloadavg()], "weights": str(yam.weights)}

    # 1. decode once (timed), then the model alone on the reference windows of every clip
    waves, t_dec, c_dec = timed(lambda: [decode(f, 16000) for f in files])
    audio_s = sum(len(w) for w in waves) / 16000
    res["audio_seconds"] = round(audio_s, 1)
    res["decode_ms_per_clip_cpu"] = round(c_dec / len(files) * 1000, 2)
    wins = np.concatenate([reference_windows(w) for w in waves])
    yam.model.run(wins[:20])
    _, w_m, c_m = timed(lambda: yam.model.run(wins))
    res["model_ms_per_window_cpu"] = round(c_m / len(wins) * 1000, 3)
    res["model_windows_per_audio_second"] = round(len(wins) / audio_s, 3)
    res["model_alone_x_realtime_cpu"] = round(audio_s / c_m)

    # 2. the encoders through the seam (framing/front end + model + pooling; the audio already decoded),
    #    what ingest and tag run per clip, YAMNet and the CNN in the same run
    def through_seam(enc):
        def go():
            n = 0
            for w in waves:
                for out, _ in encode_segments(enc, segment_array(w, sr=enc.sample_rate)):
                    n += len(out.embeddings)
            return n
        go()  # warm-up
        return timed(go)

    for key, enc in (("yamnet", yam), ("cnn", cnn)):
        n, w_s, c_s = through_seam(enc)
        res[f"{key}_encoder_segments"] = n
        res[f"{key}_encoder_x_realtime_cpu"] = round(audio_s / c_s)
        res[f"{key}_encoder_x_realtime_wall"] = round(audio_s / w_s)
        res[f"{key}_decode_plus_encoder_x_realtime_cpu"] = round(audio_s / (c_s + c_dec))

    # 3. ingest into a fresh library (decode + segment + encode + store), one core: YAMNet alone vs the CNN (+ joint)
    tmp = tempfile.mkdtemp()
    try:
        for key, model in (("yamnet", spec), ("cnn", "default")):
            lib = Library(f"{tmp}/warm-{key}")
            ingest(lib, files[:5], model=model, options=IngestOptions(progress=False))
            lib.close()
            lib = Library(f"{tmp}/{key}")
            rep, w_i, c_i = timed(lambda: ingest(lib, files, model=model, options=IngestOptions(progress=False)))
            st = lib.stats()
            lib.close()
            res[f"ingest_{key}"] = {"clips": len(rep.added), "segments": st["segments"], "wall_s": round(w_i, 2),
                                    "cpu_s": round(c_i, 2), "x_realtime_wall": round(rep.seconds_of_audio / w_i),
                                    "x_realtime_cpu": round(rep.seconds_of_audio / c_i)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # 4. the fast path's choices, one thread
    res["ms_per_window_cpu_by_variant"] = bench_model_variants(yam.weights, wins[:600])

    # 5. interpreter threads (one interpreter each, the GIL released in invoke): wall time on all cores
    if len(ALL_CORES) > 1:
        os.sched_setaffinity(0, set(ALL_CORES))
        for t in (1, len(ALL_CORES)):
            enc = YAMNetEncoder(yam.weights, threads=t)
            enc.model.run(wins[:64], t)
            _, w_t, _ = timed(lambda: enc.model.run(wins, t))
            res[f"model_x_realtime_wall_{t}_threads"] = round(audio_s / w_t)
        res["cores_for_threads"] = len(ALL_CORES)

    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(f"\n{res['cpu']}, one core, {res['clips']} ESC-50 clips ({res['audio_seconds']:.0f} s), load {res['load_average']}:")
    print(f"  YAMNet model alone: {res['model_ms_per_window_cpu']} ms/window x {res['model_windows_per_audio_second']}"
          f" windows/s = {res['model_alone_x_realtime_cpu']}x real time")
    print(f"  encoder (framing + model + pooling): YAMNet {res['yamnet_encoder_x_realtime_cpu']}x, CNN {res['cnn_encoder_x_realtime_cpu']}x")
    print(f"  ingest: YAMNet {res['ingest_yamnet']['x_realtime_cpu']}x (CPU) / {res['ingest_yamnet']['x_realtime_wall']}x (wall);"
          f" CNN + joint {res['ingest_cnn']['x_realtime_cpu']}x / {res['ingest_cnn']['x_realtime_wall']}x")


if __name__ == "__main__":
    main()
