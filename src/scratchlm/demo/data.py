"""The demo's data: synthetic tasks, its tokenizer (corpus + the SFT chats' pieces), and the shard folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchlm.demo.common import say
from scratchlm.demo.settings import DemoSettings, tools_on


def write_chat_pieces(path: Path, sft_train: Path, *more: Path) -> None:
    """Every turn of the SFT chats of `sft_train` (and `more` files) as the chat template encodes it
    ("role\\ncontent" between control tokens, tag tokens split off; a record's tools in its system turn, calls
    and tool results as the template writes them), one {"text"} record each: the demo tokenizer learns from these
    after the corpus.

    With the chats in its text the tokenizer has merges for the template and the task phrasings
    ("assistant", "等于多少"): measured 46 → 41 tokens per add2 chat and 52 → 33 per identity chat, so each
    SFT step sees more conversations. With the tool chats too, the calculator's system turn takes 178 tokens
    instead of 289 (the words and JSON punctuation merge, but the pre-tokenizer keeps words apart)."""
    from scratchlm.data.jsonl import iter_jsonl
    from scratchlm.tokenizer.bpe import TAG_TOKENS
    from scratchlm.tokenizer.tools import chat_turns

    tags = re.compile("|".join(map(re.escape, TAG_TOKENS)))
    with path.open("w", encoding="utf-8") as f:
        for src in (sft_train, *more):
            with src.open(encoding="utf-8") as lines:
                for _, rec in iter_jsonl(lines, src):
                    for m in chat_turns(rec["conversations"], rec.get("tools")):
                        for piece in tags.split(f"{m['role']}\n{m['content']}"):
                            if piece:
                                f.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")


def build_demo_tools(data: Path, s: DemoSettings) -> dict[str, Path]:
    """The tool-use chats of s.tool_sizes (agent/tool_data.py) in data/tools: sft_{split} and prompt_{split}."""
    from scratchlm.agent.tool_data import build_tool_sft

    return build_tool_sft(data / "tools", sizes=s.tool_sizes, direct_share=s.tool_direct_share, seed=s.seed,
                          tools=s.tool_names)


def check_chats_fit(shards: Path, seq_len: int, setting: str = "tool_seq_len") -> int:
    """The longest chat of the SFT shard folder `shards` in tokens; a SystemExit naming the demo `setting` when one
    would not fit a row of `seq_len` (the batcher would cut it, and with it a tool chat's call or answer)."""
    from scratchlm.shards.datasets import open_shards

    longest = int(open_shards(shards).doc_lens.max(initial=0))
    if longest > seq_len + 1:
        raise SystemExit(f"scratchlm demo: a chat of {shards} is {longest} tokens, longer than {setting}="
                         f"{seq_len} + 1; raise it (--setting {setting}={longest})")
    return longest


def prepare_demo_data(out: Path, s: DemoSettings) -> dict[str, Path]:
    """Tokenizer, pretrain shards (corpus train + validation splits) and SFT shards from synthetic tasks."""
    from scratchlm.data.corpus import corpus_path
    from scratchlm.shards.prepare import prepare
    from scratchlm.data.synth import build_synth
    from scratchlm.tokenizer.bpe import train_tokenizer

    data = out / "data"
    tok_dir = out / "tokenizer"
    data.mkdir(parents=True, exist_ok=True)
    say("building synthetic tasks")
    files = build_synth(data / "synth", seed=s.seed, tasks=dict(s.synth_sizes), mixed_turns_prob=s.sft_mixed_turns,
                        think_off_prob=s.sft_think_off, conversation_by_task=s.sft_conversations_by_task)
    tools = {}
    if tools_on(s):
        say(f"building tool-use chats ({', '.join(s.tool_names)}): {list(s.tool_sizes)}")
        tools = build_demo_tools(data, s)
    if not (tok_dir / "tokenizer.json").exists():
        say(f"training a {s.vocab_size}-token byte-level BPE tokenizer on the built-in corpus and the SFT chats")
        chats = data / "tokenizer_chats.jsonl"
        write_chat_pieces(chats, files["sft_train"], *([tools["sft_train"]] if tools else []))
        train_tokenizer(tok_dir, vocab_size=s.vocab_size, inputs=[corpus_path("train"), chats], show_progress=False)
    say("preparing pretraining shards (built-in corpus: train and validation splits) and SFT shards")
    prepare("pretrain", tok_dir, None, data / "pretrain")
    prepare("pretrain", tok_dir, [corpus_path("validation")], data / "pretrain_val", dedup=False)
    # the tool chats follow the task chats in the shards; training visits whole chats in a seeded random order
    prepare("sft", tok_dir, [files["sft_train"], *([tools["sft_train"]] if tools else [])], data / "sft", dedup=False)
    if tools:
        longest = check_chats_fit(data / "sft", s.tool_seq_len)
        say(f"SFT with tool chats: the longest chat is {longest} tokens (rows of {s.tool_seq_len})")
    prepare("sft", tok_dir, [files["sft_val"]], data / "sft_val", dedup=False)
    # prompt_eval: what the demo reports, the test split by default (s.eval_split; val, the dev split, to choose
    # settings on); sft_val stays the validation loss every stage watches while training, a dev-side use.
    return {"tokenizer": tok_dir, "pretrain": data / "pretrain", "pretrain_val": data / "pretrain_val",
            "sft": data / "sft", "sft_val": data / "sft_val", "prompt_eval": files[f"prompt_{s.eval_split}"]}


def prepare_once(kind: str, tokenizer: Path, src: Path, dst: Path) -> Path:
    """Prepare `src` into the shard folder `dst` unless an earlier run of this demo did (its meta.json is there)."""
    from scratchlm.shards.prepare import prepare

    if not (dst / "meta.json").exists():
        prepare(kind, tokenizer, [src], dst, dedup=False)
    return dst


def prepare_preference_data(out: Path, s: DemoSettings, paths: dict[str, Path]) -> dict[str, Path]:
    """Preference shards of s.pref_sizes for the reward and dpo stages, once per demo: train, val (the dev split:
    their validation loss) and the pairs they are scored on (s.eval_split)."""
    from scratchlm.data.synth import build_synth

    data = out / "data"
    files = build_synth(data / "pref_synth", seed=s.seed, tasks=dict(s.pref_sizes))
    names = {"train": "pref", "val": "pref_val", s.eval_split: f"pref_{s.eval_split}"}
    for split, name in names.items():
        prepare_once("preference", paths["tokenizer"], files[f"preference_{split}"], data / name)
    return {**paths, "pref": data / "pref", "pref_val": data / "pref_val", "pref_eval": data / names[s.eval_split]}
