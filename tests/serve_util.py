"""Shared by the serving tests: a tiny chat run trained in seconds, and a real uvicorn server on a free
loopback port running in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path


from run_util import train_by_heart
from scratchlm.serve.launch import free_port

# What the tiny chat model learns by heart: a reasoning reply, plain replies, a long one (to keep a stream
# busy), and an answer with thinking switched off (the prompt ends in an empty <think></think>).
CHATS = [
    ("What is 2 plus 3?", "<think>2+3=5</think>5"),
    ("hello", "Hello! How can I help you today?"),
    ("Tell me about the cat.", "The cat sat on the mat, and the cat was happy. " * 12),
]
THINK_OFF_CHATS = [("What is 2 plus 3?", "5")]


def make_chat_run(root: Path, max_seq_len: int = 256, steps: int = 100) -> Path:
    """A run folder (objective sft) holding a debug-preset model trained to answer CHATS, with a small
    tokenizer trained on them."""
    from scratchlm.config import load_config
    from scratchlm.runs import save_run
    from scratchlm.serve.prompt import THINK_OFF
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    text = root / "text.txt"
    lines = [q + "\n" + a for q, a in CHATS] + ["hello world", "床前明月光", "the quick brown fox"]
    text.write_text("\n".join(lines * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=320, inputs=[text], show_progress=False)
    tok = Tokenizer.load(tok_dir)
    cfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", f"model.max_seq_len={max_seq_len}",
                                "train.objective=sft"])
    rows = []
    for (q, a), think in [(c, True) for c in CHATS] + [(c, False) for c in THINK_OFF_CHATS]:
        content = a if think else THINK_OFF + a
        # thinking off: encode_chat leaves the empty block out of the targets (the prompt's, not the model's)
        rows.append(tok.encode_chat([{"role": "user", "content": q}, {"role": "assistant", "content": content}]))
    model = train_by_heart(cfg, rows, steps)
    return save_run(root / "run", model, cfg, tok_dir)


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread; `url` is its base address."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(run_dir: Path, api_key: str | None = None, rag=None, **engine_kwargs):
    """(LiveServer, engine) of `run_dir`: the engine started, the app served, both stopped afterwards."""
    from scratchlm.serve.app import create_app
    from scratchlm.serve.cli import open_engine

    engine, tokenizer, _ = open_engine(str(run_dir), device="cpu", **engine_kwargs)
    try:
        with LiveServer(create_app(engine, tokenizer, "tiny", api_key=api_key, rag=rag)) as server:
            yield server, engine
    finally:
        engine.shutdown()
