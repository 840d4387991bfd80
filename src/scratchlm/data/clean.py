"""Text cleaning and exact-dedup keys for `scratchlm prepare`.

Cleaning is deliberately small: Unicode normalisation (NFKC by default), control characters removed
(\\n and \\t kept), and for pretrain documents surrounding whitespace stripped. Anything that reads text
the model was trained on (eval answers, reward checks) can call `clean_text` to see the same string.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

NORMALIZE_FORMS = ("NFKC", "NFC", "none")

# Unicode category Cc minus \t and \n: C0 controls, DEL and the C1 block (\r goes too: "\r\n" → "\n").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str, normalize: str = "NFKC") -> str:
    """`text` normalised (NFKC/NFC/none) with control characters other than \\n and \\t removed."""
    if normalize != "none":
        # is_normalized is ~50x cheaper than normalize and most text already is.
        if not unicodedata.is_normalized(normalize, text):
            text = unicodedata.normalize(normalize, text)
    return _CONTROL.sub("", text)


def clean_messages(messages: list[dict], normalize: str = "NFKC") -> list[dict]:
    """A copy of a chat with every message's content cleaned (other keys kept)."""
    return [{**m, "content": clean_text(m["content"], normalize)} if m.get("content") is not None else dict(m)
            for m in messages]


def dedup_key(item: Any) -> int:
    """64-bit hash of a cleaned item (text, chat, pair or prompt) for exact dedup and the val split."""
    if isinstance(item, str):
        data = item.encode("utf-8")
    else:
        # sort_keys: the same chat with keys in another order is the same document.
        data = json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def in_val_split(key: int, val_frac: float) -> bool:
    """Deterministic val membership from the item's hash: the same text lands in the same split."""
    # Use the top bits: dedup_key's low bits also index the dedup set.
    return (key >> 11) / float(1 << 53) < val_frac
