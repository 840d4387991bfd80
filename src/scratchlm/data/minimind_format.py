"""Synthetic files in MiniMind's pretrain format, at any size, for testing the data path at scale.

MiniMind's pretrain_hq.jsonl (1.6 GB, ~1.4 M lines) holds `{"text": "<|im_start|>…<|im_end|> <|im_start|>…"}`
lines of mostly Chinese text, each under 512 characters. The generator writes lines of that shape: one to three
`<|im_start|>…<|im_end|>` segments of Zipf-distributed "words" (1-3 CJK characters, some ASCII) per line, every
line different (seeded random words: exact and near duplicates are as rare as in a cleaned corpus), ~1 KB of
UTF-8 per line on average. It is a stand-in for the released file's *shape and size*, not its statistics:
throughput on the real file differs (its text compresses better under a trained tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_CJK_LO, _CJK_HI = 0x4E00, 0x4E00 + 3500  # the common-character block's first 3,500 code points
_PUNCT = "，。、：；！？"


def _vocabulary(rng: np.random.Generator, n_words: int) -> list[str]:
    """`n_words` distinct words: mostly 1-3 CJK characters, every tenth an ASCII word."""
    words: set[str] = set()
    while len(words) < n_words:
        if len(words) % 10 == 9:
            n = int(rng.integers(2, 9))
            words.add("".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, n)) + " ")
        else:
            n = int(rng.integers(1, 4))
            words.add("".join(chr(c) for c in rng.integers(_CJK_LO, _CJK_HI, n)))
    order = rng.permutation(len(words))  # sorted first: set order varies between runs; then shuffled so ranks mix
    return [w for _, w in sorted(zip(order.tolist(), sorted(words)))]


def write_pretrain_jsonl(path: str | Path, n_bytes: int, seed: int = 0, n_words: int = 20_000,
                         words_per_segment: tuple[int, int] = (40, 140), max_segments: int = 3) -> int:
    """Write about `n_bytes` of MiniMind-pretrain-format lines to `path`; shorter segments (`words_per_segment`,
    `max_segments`) give more lines per MB, which a test of per-document state needs;
    returns the number of lines written (it stops after the 2,000-line block that passes `n_bytes`)."""
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocabulary(rng, n_words), dtype=object)
    # Zipf-like word frequencies (rank^-1.1), as natural text has: a trained BPE then learns real merges.
    p = 1.0 / np.arange(1, n_words + 1) ** 1.1
    p /= p.sum()
    written = lines = 0
    chunk = 2000  # lines per vectorised draw
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            n_seg = rng.integers(1, max_segments + 1, chunk)
            seg_words = rng.integers(*words_per_segment, int(n_seg.sum()))
            words = vocab[rng.choice(n_words, size=int(seg_words.sum()), p=p)]
            punct = rng.integers(0, len(_PUNCT), len(seg_words))
            out, w, s = [], 0, 0
            for i in range(chunk):
                segs = []
                for _ in range(int(n_seg[i])):
                    k = int(seg_words[s])
                    segs.append("<|im_start|>" + "".join(words[w : w + k]) + _PUNCT[punct[s]] + "<|im_end|>")
                    w += k
                    s += 1
                out.append(json.dumps({"text": " ".join(segs)}, ensure_ascii=False) + "\n")
            block = "".join(out)
            f.write(block)
            written += len(block.encode("utf-8"))
            lines += chunk
    return lines
