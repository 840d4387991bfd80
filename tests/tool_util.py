"""Shared by the tool tests: a tiny chat run trained in seconds to call the calculator (a whole tool loop: the
call, then the answer read from the tool's result) and to answer a greeting without tools."""

from __future__ import annotations

from pathlib import Path


from scratchlm.agent.builtin import calculator
from scratchlm.agent.tools import function_tool
from run_util import train_by_heart

# The agent's own calculator tool, as the template lists it: the server tests and the agent's share it.
CALC = function_tool(calculator).schema()
QUESTION = "What is 12 times 34?"
CALL_ARGS = {"expression": "12*34"}
RESULT = "408"
ANSWER = "12 times 34 is 408."
# The conversation the model learns by heart, with CALC listed in the system turn.
LOOP = [{"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": CALL_ARGS}]},
        {"role": "tool", "content": RESULT},
        {"role": "assistant", "content": ANSWER}]
GREETING = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hello! How can I help?"}]


def make_tool_run(root: Path, steps: int = 300, max_seq_len: int = 512) -> Path:
    """A run folder (objective sft, debug preset) whose model answers QUESTION with the calculator call, then
    ANSWER once the tool's result is in, and GREETING without tools."""
    from scratchlm.config import load_config
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)

    text = root / "text.txt"
    lines = [QUESTION, ANSWER, "hello", "Hello! How can I help?", RESULT, str(CALC), "the quick brown fox"]
    text.write_text("\n".join(lines * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=512, inputs=[text], show_progress=False)
    tok = Tokenizer.load(tok_dir)
    # the system turn's own words are learnt into the vocabulary too (shorter prompts)
    text.write_text("\n".join([tok.render_chat(LOOP, tools=[CALC])] * 20 + lines * 20), encoding="utf-8")
    tok_dir = train_tokenizer(root / "tok", vocab_size=512, inputs=[text], show_progress=False)
    tok = Tokenizer.load(tok_dir)
    cfg = load_config("debug", [f"model.vocab_size={tok.vocab_size}", f"model.max_seq_len={max_seq_len}",
                                "train.objective=sft"])
    rows = [tok.encode_chat(LOOP, tools=[CALC]), tok.encode_chat(GREETING)]
    assert max(len(ids) for ids, _ in rows) <= max_seq_len
    model = train_by_heart(cfg, rows, steps)
    return save_run(root / "run", model, cfg, tok_dir)
