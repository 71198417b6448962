"""YAMNet behind the Encoder seam, and getting its weights as a user would (`nels models fetch|add|list`).

The encoder tests need the real weights (../shared/models/yamnet) and skip without them; the fetch tests run
against a local HTTP server on 127.0.0.1 (Range requests, a corrupted copy, a connection dropped midway) with
a small stand-in file registered as a known model, and once with the real file where it is present."""
from __future__ import annotations

import hashlib
import http.server
import json
import socketserver
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SR, synth, write_wav

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "yamnet"
WEIGHTS = SHARED / "yamnet_classification.tflite"


def needs_weights():
    if not WEIGHTS.is_file():
        pytest.skip("needs the YAMNet weights in ../shared/models/yamnet")
    pytest.importorskip("ai_edge_litert")


@pytest.fixture
def enc():
    needs_weights()
    from nels.encoders.yamnet import YAMNetEncoder

    return YAMNetEncoder(WEIGHTS)


def direct_reference(x: np.ndarray):
    """The TFLite interpreter called directly, nothing of NELS: the reference framing (0.975 s windows
    every 0.48 s, the last one zero-padded), scores from the output, the embedding from the internal
    tensor (all tensors preserved), dequantised."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": that is what this is
        it = Interpreter(model_path=str(WEIGHTS), num_threads=1, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    emb_t = [d for d in it.get_tensor_details() if d["name"] == "tower0/network/layer28/reduce_mean"][0]
    scale, zero = emb_t["quantization"]
    n = 1 if x.size <= 15600 else 1 + int(np.ceil((x.size - 15600) / 7680))
    starts, scores, embs = [], [], []
    for k in range(n):
        w = np.zeros(15600, np.float32)
        part = x[k * 7680:k * 7680 + 15600]
        w[:part.size] = part
        it.set_tensor(it.get_input_details()[0]["index"], w)
        it.invoke()
        scores.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
        embs.append((it.get_tensor(emb_t["index"]).reshape(-1).astype(np.float32) - zero) * scale)
        starts.append(k * 7680)
    return np.array(starts), np.array(scores), np.array(embs)


def scene(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise, then a beep, then a tone: different classes along the clip."""
    n = int(seconds * SR)
    parts = [synth("noise", seconds / 3 + 1, seed=seed), synth("high", seconds / 3 + 1, seed=seed + 1),
             synth("tone", seconds / 3 + 1, seed=seed + 2)]
    return np.concatenate(parts)[:n]


@pytest.mark.parametrize("seconds", [0.6, 1.5, 5.0, 7.3, 14.5])
def test_segments_are_means_of_the_reference_windows_inside_them(enc, seconds):
    x = scene(seconds)
    out = enc.encode(x, SR)
    starts, scores, embs = direct_reference(x)
    assert len(out.starts) >= 1 and out.probs.shape == (len(out.starts), 521) and out.raw.shape == (len(out.starts), 1024)
    for i, (s, e) in enumerate(zip(out.starts, out.ends)):
        s, e = int(round(s * SR)), int(round(e * SR))
        inside = (starts >= s) & (starts + 15600 <= e)
        if not inside.any():  # a clip shorter than one window: the reference's single padded window
            assert seconds < 0.975 and len(starts) == 1
            inside = np.array([True])
        assert np.allclose(out.probs[i], scores[inside].mean(0), atol=1e-6)
        assert np.allclose(out.raw[i], embs[inside].mean(0), atol=1e-5)
    assert np.allclose(out.embeddings, out.raw / np.linalg.norm(out.raw, axis=1, keepdims=True), atol=1e-6)
    # YAMNet's own view: the reference windows themselves
    win = enc.encode_windows(x, SR)
    assert np.allclose(win.starts * SR, starts) and np.allclose(win.probs, scores, atol=1e-6)
    assert np.allclose(win.raw, embs, atol=1e-5)


def test_framing_and_threads(enc):
    from nels.encoders.yamnet import YAMNetEncoder, grid_windows

    # a full 2 s segment holds 2 or 3 grid windows; the window at 12.0 s lies in [11, 13) and [12, 14)
    assert list(grid_windows(0, 32000)) == [0, 1, 2] and list(grid_windows(16000, 32000)) == [3, 4]
    assert 25 in grid_windows(11 * SR, 2 * SR) and 25 in grid_windows(12 * SR, 2 * SR)
    x = scene(14.5, seed=3)
    one = enc.encode(x, SR)
    two = YAMNetEncoder(WEIGHTS, threads=2).encode(x, SR)
    assert np.array_equal(one.probs, two.probs) and np.array_equal(one.raw, two.raw)
    assert enc.encode(x[::2], SR // 2).probs.shape == (len(one.starts), 521)  # another rate is resampled
    # identity and the seam's attributes
    assert enc.dim == 1024 and enc.space == "yamnet" and len(enc.labels) == len(set(enc.labels)) == 521
    assert enc.labels[0] == "Speech" and enc.mids[0] == "/m/09x0r" and (enc.window, enc.hop) == (2.0, 1.0)
    assert enc.meta["weights_sha256"] == "10c95ea3eb9a7bb4cb8bddf6feb023250381008177ac162ce169694d05c317de"
    top = [enc.labels[j] for j in np.argsort(-one.probs[0])[:3]]
    assert "White noise" in top or "Noise" in top, top


def test_create_encoder_finds_the_weights(monkeypatch, tmp_path):
    needs_weights()
    from nels import config
    from nels.encoders.base import create_encoder
    from nels.errors import ModelError

    monkeypatch.setenv("NELS_MODELS", str(tmp_path / "models"))
    assert create_encoder("yamnet").weights == WEIGHTS.resolve()  # not installed: the shared copy
    assert create_encoder(f"yamnet:{SHARED}").weights == WEIGHTS.resolve()  # a folder, or the file itself
    # an installed copy that is not the published file (one weight byte changed) is refused by name...
    corrupt = tmp_path / "models" / "yamnet" / WEIGHTS.name
    corrupt.parent.mkdir(parents=True)
    data = bytearray(WEIGHTS.read_bytes())
    data[2_000_000] ^= 1
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="not the published YAMNet file"):
        create_encoder("yamnet")
    assert create_encoder(f"yamnet:{corrupt}").meta["official"] is False  # ...and usable as a file of one's own
    corrupt.unlink()
    monkeypatch.setattr(config, "shared_candidates", lambda rel: [tmp_path / "nowhere"])
    with pytest.raises(ModelError, match="nels models fetch yamnet"):
        create_encoder("yamnet")
    with pytest.raises(ModelError, match="no such"):
        create_encoder(f"yamnet:{tmp_path / 'missing.tflite'}")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelError):
        create_encoder(f"yamnet:{bad}")


def test_ingest_search_and_tag_through_yamnet(tmp_path, enc):
    from nels.ingest.runner import IngestOptions, ingest
    from nels.library import Library
    from nels.search.tag import tag_file

    d = tmp_path / "in"
    for i, kind in enumerate(["noise", "high", "tone"] * 2):
        write_wav(d / f"{kind}-{i}.wav", synth(kind, seconds=4.0, seed=i))
    lib = Library(tmp_path / "lib")
    rep = ingest(lib, [str(d)], model=f"yamnet:{WEIGHTS}", options=IngestOptions(progress=False))
    assert len(rep.added) == 6 and not rep.failed
    assert lib.spaces() == ["yamnet"] and lib.get_meta("model_name") == "yamnet-v1"

    for query, kind in [("white noise", "noise"), ("beep", "high"), ("sine wave", "tone")]:
        res = lib.search(text=query, k=2, mode="linguistic")
        assert [r["title"].split("-")[0] for r in res] == [kind, kind], (query, [r["title"] for r in res])
    res = lib.search(audio=synth("high", seconds=3.0, seed=9), k=2, mode="acoustic")
    assert [r["title"].split("-")[0] for r in res] == ["high", "high"], [r["title"] for r in res]

    mixed = np.concatenate([synth("noise", 4.0, seed=5), synth("high", 4.0, seed=6)])
    events = tag_file(write_wav(tmp_path / "mixed.wav", mixed), enc, threshold=0.5)
    by = {e["label"]: e for e in events}
    assert "Beep, bleep" in by and by["Beep, bleep"]["start"] >= 3.0 and by["Beep, bleep"]["end"] == 8.0, events
    noise = [e for e in events if e["label"] in ("White noise", "Noise", "Static")]
    assert noise and noise[0]["start"] == 0.0 and noise[0]["end"] <= 5.0, events
    lib.close()


# -- getting the weights ---------------------------------------------------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    """Serves server.files[path] with Range support; server.drop[path] = n cuts the next response of that
    path after n bytes (then it is cleared); server.ignore_range answers 200 to every request."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = srv.drop.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            import socket

            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def file_server():
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), _Files)
    srv.files, srv.drop, srv.requests, srv.ignore_range = {}, {}, [], False
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def toy_model(monkeypatch, tmp_path):
    """A 300 kB stand-in registered as a known model (the real file's tests are below)."""
    from nels import config
    from nels.encoders import installed

    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    m = installed.KnownModel(name="toy", file="toy.bin", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                             urls=("http://127.0.0.1:9/unreachable",), licence="CC0", classes=3, kind="encoder",
                             what="a test file", homepage="-", shared="models/toy")
    monkeypatch.setitem(installed.KNOWN, "toy", m)
    monkeypatch.setenv("NELS_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(config, "shared_candidates", lambda rel: [tmp_path / "shared" / rel])
    return m, data


def test_fetch_installs_checks_and_resumes(toy_model, file_server, tmp_path):
    from nels.encoders import installed

    m, data = toy_model
    base, srv = file_server
    srv.files["/toy.bin"] = data
    srv.drop["/toy.bin"] = 100_000  # the connection drops after 100 kB; the fetch resumes from there
    out = installed.fetch("toy", url=base + "/toy.bin", progress=False)
    dest = tmp_path / "models" / "toy" / "toy.bin"
    assert out["downloaded"] and Path(out["path"]) == dest and dest.read_bytes() == data
    assert srv.requests == [("/toy.bin", None), ("/toy.bin", "bytes=100000-")]
    man = json.loads((dest.parent / "manifest.json").read_text())
    assert man["sha256"] == m.sha256 and man["source"] == base + "/toy.bin" and man["licence"] == "CC0"
    assert not (dest.parent / "toy.bin.part").exists()
    assert installed.find("toy") == (dest, "installed")
    assert installed.fetch("toy", url=base + "/toy.bin", progress=False)["downloaded"] is False  # no download
    assert len(srv.requests) == 2
    rows = {r["name"]: r for r in installed.list_models()}
    assert rows["toy"]["status"] == "installed" and rows["toy"]["size"] == len(data) and rows["toy"]["classes"] == 3


def test_fetch_resumes_a_partial_download_from_an_earlier_run(toy_model, file_server, tmp_path):
    from nels.encoders import installed

    m, data = toy_model
    base, srv = file_server
    srv.files["/toy.bin"] = data
    part = tmp_path / "models" / "toy" / "toy.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:123_456])
    installed.fetch("toy", url=base + "/toy.bin", progress=False)
    assert srv.requests == [("/toy.bin", "bytes=123456-")]
    assert (part.parent / "toy.bin").read_bytes() == data
    # a server that ignores Range: the download starts over and still ends right
    srv.ignore_range, srv.requests[:] = True, []
    part.write_bytes(data[:5000])
    installed.fetch("toy", url=base + "/toy.bin", progress=False, force=True)
    assert (part.parent / "toy.bin").read_bytes() == data and not part.exists()


def test_fetch_refuses_a_corrupted_or_wrong_file(toy_model, file_server, tmp_path):
    from nels.encoders import installed
    from nels.errors import ModelError

    m, data = toy_model
    base, srv = file_server
    bad = bytearray(data)
    bad[150_000] ^= 0xFF
    srv.files["/bad.bin"] = bytes(bad)
    srv.files["/short.bin"] = data[:-10]
    with pytest.raises(ModelError, match="SHA-256 .* refused"):
        installed.fetch("toy", url=base + "/bad.bin", progress=False)
    with pytest.raises(ModelError, match="offers 299990 bytes"):
        installed.fetch("toy", url=base + "/short.bin", progress=False)
    with pytest.raises(ModelError, match="HTTP 404"):
        installed.fetch("toy", url=base + "/missing.bin", progress=False)
    with pytest.raises(ModelError, match="only http"):
        installed.fetch("toy", url="file:///etc/passwd", progress=False)
    d = tmp_path / "models" / "toy"
    assert not (d / "toy.bin").exists() and not (d / "toy.bin.part").exists()
    assert installed.find("toy") is None
    assert {r["name"]: r for r in installed.list_models()}["toy"]["status"] == "missing"
    with pytest.raises(ModelError, match="nels models fetch toy"):
        installed.require("toy")


def test_add_registers_a_checked_local_copy(toy_model, tmp_path):
    from nels.encoders import installed
    from nels.errors import ModelError

    m, data = toy_model
    good = tmp_path / "dl" / "toy.bin"
    good.parent.mkdir()
    good.write_bytes(data)
    out = installed.add("toy", good.parent)  # a folder holding the file, or the file
    assert Path(out["path"]).read_bytes() == data and out["source"] == str(good.resolve())
    (tmp_path / "other.bin").write_bytes(data[::-1])
    with pytest.raises(ModelError, match="refused"):
        installed.add("toy", tmp_path / "other.bin")
    with pytest.raises(ModelError, match="unknown model"):
        installed.add("nope", good)
    assert installed.find("toy")[1] == "installed"


def test_cli_models_fetch_add_list_with_the_real_file(monkeypatch, tmp_path, file_server, capsys):
    if not WEIGHTS.is_file():
        pytest.skip("needs the YAMNet weights in ../shared/models/yamnet")
    from nels import config
    from nels.cli import main

    monkeypatch.setenv("NELS_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(config, "shared_candidates", lambda rel: [tmp_path / "nowhere"])
    base, srv = file_server
    data = WEIGHTS.read_bytes()
    srv.files["/yamnet.tflite"] = data
    srv.files["/corrupt.tflite"] = data[:2_000_000] + bytes([data[2_000_000] ^ 1]) + data[2_000_001:]
    srv.drop["/yamnet.tflite"] = 1_500_000

    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["yamnet"]["status"] == "missing" and rows["yamnet"]["licence"] == "Apache-2.0"
    assert rows["esc50-cnn"]["licence"].startswith("CC BY-NC") and rows["audioset-ontology"]["licence"] == "CC BY-SA 4.0"

    assert main(["models", "fetch", "yamnet", "--url", base + "/corrupt.tflite"]) == 2
    assert "refused" in capsys.readouterr().err
    assert main(["models", "fetch", "yamnet", "--url", base + "/yamnet.tflite", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["downloaded"] and out["size"] == 4_126_810 and out["classes"] == 521
    assert ("/yamnet.tflite", "bytes=1500000-") in srv.requests
    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    assert "yamnet" in text and "installed" in text and "Apache-2.0" in text

    from nels.encoders.base import create_encoder

    assert create_encoder("yamnet").weights == (tmp_path / "models" / "yamnet" / WEIGHTS.name).resolve()
    assert main(["models", "add", "yamnet", str(WEIGHTS)]) == 0
    assert "installed yamnet" in capsys.readouterr().out
