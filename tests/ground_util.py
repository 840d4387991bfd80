"""Shared by the grounded-answer and tool-use data tests: a tiny chat run that learns given chats by heart in
seconds (a debug-preset model and a small tokenizer trained on the chats' own text)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from run_util import train_by_heart


def make_chat_run(root: Path, chats: Sequence[tuple[list[dict], list[dict] | None]], steps: int = 250,
                  max_seq_len: int = 1024, vocab_size: int = 600) -> Path:
    """A run folder (objective sft) whose model was trained on `chats` ((messages, tools or None)) to mask 1."""
    from scratchlm.config import load_config
    from scratchlm.data.clean import clean_messages
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    chats = [(clean_messages(m), t) for m, t in chats]  # as the agent and rag ask clean what they encode
    text = root / "text.txt"
    text.write_text("\n".join([m["content"] for c, _ in chats for m in c] * 10), encoding="utf-8")
    tok = Tokenizer.load(train_tokenizer(root / "tok", vocab_size=vocab_size, inputs=[text], show_progress=False))
    text.write_text("\n".join([tok.render_chat(c, tools=t) for c, t in chats] * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=vocab_size, inputs=[text], show_progress=False)
    tok = Tokenizer.load(tok_dir)
    cfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", f"model.max_seq_len={max_seq_len}",
                                "train.objective=sft"])
    rows = [tok.encode_chat(c, tools=t) for c, t in chats]
    assert max(len(ids) for ids, _ in rows) <= max_seq_len
    model = train_by_heart(cfg, rows, steps)
    return save_run(root / "run", model, cfg, tok_dir)
