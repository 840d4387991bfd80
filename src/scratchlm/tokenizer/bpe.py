"""Byte-level BPE tokenizer (trained with HF `tokenizers`), fixed special tokens, and the ChatML template.

Special-token policy (the contract other modules rely on):
- ids 0..15 are fixed: `SPECIAL_TOKENS[i]` has id i in every tokenizer we train.
- *Control* tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|reserved_k|>`) are "special":
  `decode(..., skip_special_tokens=True)` drops them, and `encode(text)` never produces them from
  text — a user who types "<|im_end|>" gets the bytes of that string, not an end of turn. Only
  `encode(text, allow_special=True)` (and the chat encoders, at the template's own positions) emit them.
- *Tag* tokens (`<think>`, `</think>`, `<tool_call>`, ...) are ordinary added tokens: one id each,
  matched in any text, and they survive `skip_special_tokens=True` because they are part of the answer.
Encode → decode is lossless for any valid Unicode string (all 256 bytes are in the vocabulary).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.data.jsonl import iter_text_records
from scratchlm.data.thinking import THINK_OFF
from scratchlm.tokenizer.tools import CHAT_TEMPLATE as _TOOLS_CHAT_TEMPLATE
from scratchlm.tokenizer.tools import chat_turns, check_tools, call_function

if TYPE_CHECKING:  # `tokenizers` loads when a tokenizer is trained or loaded, not on `scratchlm --help`
    from tokenizers import Tokenizer as HFTokenizer

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]
RESERVED_TOKENS = [f"<|reserved_{i}|>" for i in range(7)]
# Order = id: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, <think>=3, ..., <|reserved_6|>=15.
SPECIAL_TOKENS = CONTROL_TOKENS + TAG_TOKENS + RESERVED_TOKENS
# The strings `encode(text, allow_special=True)` turns into their tokens; plain `encode` keeps them text.
SPECIAL_STRINGS = CONTROL_TOKENS + RESERVED_TOKENS
N_BYTES = 256
MIN_VOCAB_SIZE = N_BYTES + len(SPECIAL_TOKENS)
DEFAULT_MODEL_MAX_LENGTH = 32768
ROLES = ("system", "user", "assistant", "tool")

# ChatML with tool calls (tokenizer/tools.py), exactly what `render_chat` produces; exports carry it.
CHAT_TEMPLATE = _TOOLS_CHAT_TEMPLATE


# ----------------------------------------------------------------------------------------------
# Reading training / evaluation text


def _open_text(path: Path):
    """Open .txt/.jsonl (optionally .gz) as UTF-8 text; bad bytes are an error naming the file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _kind(path: Path) -> str:
    """'txt' or 'jsonl' from the file name (a trailing .gz is allowed)."""
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    for ext in ("txt", "jsonl"):
        if name.endswith("." + ext):
            return ext
    raise ValueError(f"{path}: unsupported input type; use .txt or .jsonl (optionally .gz)")


def iter_records(paths: Sequence[str | Path], chunk_chars: int = 8192) -> Iterator[dict]:
    """Yield `{"text", "lang"?}` records from .txt files (in ~chunk_chars pieces) and .jsonl files."""
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"input file not found: {p}")
        kind = _kind(p)
        try:
            with _open_text(p) as f:
                if kind == "txt":
                    # Chunks of whole lines: the concatenation of the chunks is the file.
                    buf: list[str] = []
                    size = 0
                    for line in f:
                        buf.append(line)
                        size += len(line)
                        if size >= chunk_chars:
                            yield {"text": "".join(buf)}
                            buf, size = [], 0
                    if buf:
                        yield {"text": "".join(buf)}
                    continue
                yield from iter_text_records(f, p)
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not valid UTF-8 at byte {e.start}") from None


def default_records(split: str) -> list[dict]:
    """The built-in corpus split as records."""
    from scratchlm.data.corpus import iter_corpus

    return list(iter_corpus(split))


# ----------------------------------------------------------------------------------------------
# Training


def train_tokenizer(
    out_dir: str | Path,
    vocab_size: int = 6400,
    inputs: Sequence[str | Path] | None = None,
    show_progress: bool = True,
    normalize: str = "NFKC",
) -> Path:
    """Train byte-level BPE on `inputs` (default: the built-in corpus' train split); save to out_dir.

    The training text is cleaned with `prepare`'s default (`clean_text`, NFKC) so that the merges are
    learnt on the same strings the shards will hold; the tokenizer itself has no normalizer (lossless).
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from scratchlm.data.clean import clean_text
    from scratchlm.progress import is_interactive, progress

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    if inputs:
        texts: Iterable[str] = (r["text"] for r in iter_records(inputs))
        length = None
    else:
        from scratchlm.data.corpus import corpus_texts

        texts = corpus_texts("train")
        length = len(texts)

    tok = HFTokenizer(models.BPE())
    # No normalizer: any normalisation would make decode(encode(x)) != x.
    # Digits one by one (as Llama and DeepSeek do): "38" and "94" then share a single scheme, which a small
    # model needs to learn arithmetic that generalises to operand pairs it has not seen.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # listed first, so they take ids 0..15 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes → nothing is unknown
        # The Rust bars draw nothing without a terminal: there the documents read are reported as plain lines.
        show_progress=show_progress and is_interactive(),
    )
    bar = progress(length, desc="tokenizer", unit="doc", enabled=show_progress and not is_interactive())
    n_chars = 0

    def counted(it: Iterable[str]) -> Iterator[str]:
        nonlocal n_chars
        for t in it:
            t = clean_text(t, normalize)
            n_chars += len(t)
            bar.update(1)
            yield t
        bar.set_postfix_str("all read; learning the merges")
        bar.close()

    try:
        tok.train_from_iterator(counted(texts), trainer=trainer, length=length)
    finally:
        bar.close()
    if n_chars == 0:
        raise ValueError(f"no training text in {list(map(str, inputs)) if inputs else 'the corpus'}")

    # The trainer registers every listed token as special; the tags must stay plain added tokens.
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] not in TAG_TOKENS
    out = Tokenizer(HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False)))
    return out.save(out_dir)


# ----------------------------------------------------------------------------------------------
# The wrapper


def validate_messages(messages: Any) -> list[dict]:
    """Check a chat: a list of {"role": one of ROLES, "content": str}; an assistant message may carry
    `tool_calls` (then its content may be None or missing); errors name index and field."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m:
            raise ValueError(f"messages[{i}].role is missing")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}].role={m['role']!r} is not allowed; choose one of: {', '.join(ROLES)}")
        if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool)):
            raise ValueError(f"messages[{i}].weight={m['weight']!r}: only assistant messages take a weight, 0 (a turn "
                             f"the chat shows but training does not learn) or 1 (the default)")
        calls = m.get("tool_calls")
        if calls:
            _check_calls(calls, i, m["role"])
            if m.get("content") is None:
                continue
        if "content" not in m:
            raise ValueError(f"messages[{i}].content is missing")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}].content must be a string, got {type(m['content']).__name__}")
        _check_unicode(m["content"], f"messages[{i}].content")
    return list(messages)


def _check_calls(calls: Any, i: int, role: str) -> None:
    """The tool_calls of messages[i]: only the assistant's, each a name and arguments (a dict or a JSON string)."""
    if role != "assistant":
        raise ValueError(f"messages[{i}].tool_calls: only assistant messages carry tool calls, not {role!r}")
    if not isinstance(calls, (list, tuple)):
        raise ValueError(f"messages[{i}].tool_calls must be a list, got {type(calls).__name__}")
    for j, c in enumerate(calls):
        f = call_function(c) if isinstance(c, dict) else None
        where = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise ValueError(f"{where} must be {{'name': str, 'arguments': dict or str}} (or under 'function')")
        if not isinstance(f.get("arguments"), (dict, str)):
            raise ValueError(f"{where}.arguments must be a dict or a JSON string, got {type(f.get('arguments')).__name__}")
        _check_unicode(f["name"], f"{where}.name")
        if isinstance(f["arguments"], str):
            _check_unicode(f["arguments"], f"{where}.arguments")


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> tuple[int, str] | None:
    """(position, character) of the first lone UTF-16 surrogate in `text`, or None: such a character has no
    UTF-8 form, so no tokenizer can encode it."""
    m = _SURROGATE.search(text)
    return (m.start(), m.group()) if m else None


def _check_unicode(text: str, what: str) -> None:
    """ValueError naming `what` and the position of a lone surrogate (the Rust tokenizer would fail on it with a
    bare TypeError)."""
    bad = lone_surrogate(text)
    if bad:
        raise ValueError(f"{what} is not valid Unicode: a lone surrogate U+{ord(bad[1]):04X} at character {bad[0]}")


class Tokenizer:
    """Our view of a trained tokenizer: plain-text and chat encoding, decoding, save/load."""

    def __init__(self, tok: HFTokenizer, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
        for i, s in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(s) != i:
                raise ValueError(f"tokenizer has {s!r} at id {tok.token_to_id(s)}, expected {i}")
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = tok  # parses control tokens out of text: for the template's own markers
        # Same model with control tokens treated as text (tags, not "special", are still matched).
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self.model_max_length = model_max_length
        self.endoftext_id = 0
        self.im_start_id = 1
        self.eos_id = 2  # <|im_end|>: the end of every turn, so generation stops there
        self.pad_id = self.endoftext_id
        self.stop_ids = [self.eos_id, self.endoftext_id]
        self.special_ids = [tok.token_to_id(s) for s in SPECIAL_STRINGS]
        self._newline = self._plain.encode("\n", add_special_tokens=False).ids

    # --- files -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a folder holding tokenizer.json (+ tokenizer_config.json), or from tokenizer.json."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {file}")
        cfg_file = file.parent / "tokenizer_config.json"
        max_len = DEFAULT_MODEL_MAX_LENGTH
        if cfg_file.is_file():
            max_len = int(json.loads(cfg_file.read_text(encoding="utf-8")).get("model_max_length", max_len))
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(file)), model_max_length=max_len)

    def save(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json (loadable by transformers.AutoTokenizer)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            # Qwen-style ChatML: no BOS is prepended; <|im_end|> ends a turn; <|endoftext|> pads.
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,  # byte-level: every string is representable
            "add_bos_token": False,
            "add_eos_token": False,
            "additional_special_tokens": ["<|im_start|>"] + RESERVED_TOKENS,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "chat_template": CHAT_TEMPLATE,
        }
        _atomic_write(out_dir / "tokenizer.json", self._tok.to_str(pretty=True))
        _atomic_write(out_dir / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return out_dir

    # --- vocabulary ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (e.g. "<think>"), or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Vocabulary entry of an id (byte-level form for BPE pieces), or None."""
        return self._tok.id_to_token(i)

    # --- text ------------------------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; control-token strings stay text unless allow_special."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        _check_unicode(text, "encode: the text")
        tok = self._tok if allow_special else self._plain
        return tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """`encode` over many texts in Rust, on all cores."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"encode_batch: texts[{i}] is a {type(t).__name__}, not a str")
            _check_unicode(t, f"encode_batch: texts[{i}]")
        tok = self._tok if allow_special else self._plain
        fast = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets needed
        return [e.ids for e in fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; skip_special_tokens drops control tokens but keeps <think>/tool tags."""
        if hasattr(ids, "tolist"):  # numpy array / torch tensor
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        n = self.vocab_size
        for pos, i in enumerate(ids):
            if not 0 <= i < n:
                raise ValueError(f"decode: id {i} at position {pos} is outside the vocabulary [0, {n})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    # --- chat ------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    tools: Sequence[dict] | None = None) -> str:
        """ChatML text: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per turn (+ assistant prompt); tools, calls
        and tool results as tokenizer/tools.py lowers them."""
        turns = self._turns(messages, tools)
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def _turns(self, messages: Sequence[dict], tools: Sequence[dict] | None) -> list[dict]:
        messages = validate_messages(messages)
        if tools:
            check_tools(tools)
        return chat_turns(messages, tools)

    def encode_chat(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, tools: Sequence[dict] | None = None
    ) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of the ChatML chat; mask is 1 on assistant content tokens and their <|im_end|>
        (not on an assistant message with "weight": 0, the key OpenAI's fine-tuning format uses for context turns,
        nor on a leading `<think></think>`: with thinking off the prompt puts it there, the model never writes it).

        The template's markers become control ids; message content is encoded as plain text, so a
        content string containing "<|im_end|>" cannot end the turn early. When no content contains a
        control-token string the ids equal `encode(render_chat(messages), allow_special=True)` and
        transformers' `apply_chat_template`: the tokenizer itself splits text at added tokens first and
        encodes the pieces in between independently, which is what we do here piece by piece. Tool calls are
        part of the assistant's turn (learnt); tool results sit in a user turn (mask 0: observations are not
        the model's to learn).
        """
        ids: list[int] = []
        mask: list[int] = []
        for m in self._turns(messages, tools):
            head = m["role"] + "\n"
            # "role\ncontent" is one piece between two control tokens; BPE may merge across the
            # head/content border (e.g. "\n" + leading spaces), so assign tokens by character offsets.
            enc = self._plain.encode(head + m["content"], add_special_tokens=False)
            is_asst = m["role"] == "assistant" and m.get("weight", 1) == 1  # weight 0: context only (OpenAI's)
            ids.append(self.im_start_id)
            mask.append(0)
            ids.extend(enc.ids)
            # A token is assistant's if it covers any content character (end offset past the head). A leading empty
            # think block is the prompt's switch (thinking off), never the model's to write: not a target.
            first = len(head) + (len(THINK_OFF) if is_asst and m["content"].startswith(THINK_OFF) else 0)
            mask.extend(int(is_asst and end > first) for _, end in enc.offsets)
            ids.append(self.eos_id)
            mask.append(int(is_asst))
            ids.extend(self._newline)
            mask.extend([0] * len(self._newline))
        if add_generation_prompt:
            gen = self._plain.encode("assistant\n", add_special_tokens=False).ids
            ids.extend([self.im_start_id, *gen])
            mask.extend([0] * (1 + len(gen)))
        return ids, mask


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Stats


def tokenizer_stats(tok: Tokenizer, records: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Characters/bytes per token, per record "lang" (missing → "-") and over "all"."""
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(str(r.get("lang") or "-"), []).append(r["text"])
    stats: dict[str, dict[str, float]] = {}
    total = {"docs": 0, "chars": 0, "bytes": 0, "tokens": 0}
    for lang in sorted(groups):
        texts = groups[lang]
        row = {
            "docs": len(texts),
            "chars": sum(map(len, texts)),
            "bytes": sum(len(t.encode("utf-8")) for t in texts),
            "tokens": sum(map(len, tok.encode_batch(texts))),
        }
        for k in total:
            total[k] += row[k]
        stats[lang] = row
    if len(stats) != 1:
        stats["all"] = total
    for row in stats.values():
        row["chars_per_token"] = row["chars"] / max(row["tokens"], 1)
        row["bytes_per_token"] = row["bytes"] / max(row["tokens"], 1)
    return stats
