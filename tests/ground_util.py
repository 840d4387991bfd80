"""Shared by the grounded-answer and tool-use data tests: a tiny chat run that learns given chats by heart in
seconds (a debug-preset model and a small tokenizer trained on the chats' own text)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def make_chat_run(root: Path, chats: Sequence[tuple[list[dict], list[dict] | None]], steps: int = 250,
                  max_seq_len: int = 1024, vocab_size: int = 600) -> Path:
    """A run folder (objective sft) whose model was trained on `chats` ((messages, tools or None)) to mask 1."""
    from scratchlm.config import load_config
    from scratchlm.data.clean import clean_messages
    from scratchlm.model.transformer import Transformer
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
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    rows = [tok.encode_chat(c, tools=t) for c, t in chats]
    width = max(len(ids) for ids, _ in rows)
    assert width <= max_seq_len, width
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        x[r, :len(ids)] = torch.tensor(ids)
        targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
        y[r, :len(targets)] = torch.tensor(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_run(root / "run", model, cfg, tok_dir)
