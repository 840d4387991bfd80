"""Answering with retrieved context: chunks (with their [source#chunk] keys) go into the user turn of
the chat template (rendered by `data.rag_prompt.sources_turn`), the model answers through the one generation path (`scratchlm.engine.LLM`),
and the result lists which sources were given and which the answer cited."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from scratchlm.data.rag_prompt import TEMPLATES, question_lang, sources_turn  # noqa: F401 (re-exported)
from scratchlm.rag.store import Hit

_CITE = re.compile(r"\[([^\[\]\s]+#\d+)\]")


@dataclass
class Answer:
    """The model's answer, the context it was given, and the citations found in the answer."""

    text: str
    sources: list[str]
    cited: list[str] = field(default_factory=list)
    prompt: str = ""

    def with_citations(self) -> str:
        """The answer followed by the sources given to the model (always cited, even if the model did not)."""
        refs = " ".join(f"[{r}]" for r in (self.cited or self.sources))
        return f"{self.text}\n\nsources: {refs}" if refs else self.text


def build_messages(question: str, hits: Sequence[Hit], fit=None) -> tuple[list[dict], list[str]]:
    """(chat messages, refs used): the context blocks `[ref] text`, shortened until `fit(messages)` is True.

    `fit` (optional) says whether a message list fits the model's context; the lowest-ranked chunks are
    cut first (then dropped), so a small model with a short context still gets the best chunk.
    """
    blocks = [(h.ref, " ".join(h.text.split())) for h in hits]

    def render(bs: list[tuple[str, str]]) -> list[dict]:
        return sources_turn(question, bs)  # the one rendering (data/rag_prompt.py), shared with the SFT data

    if fit is None:
        return render(blocks), [r for r, _ in blocks]
    while blocks and not fit(render(blocks)):
        ref, text = blocks[-1]
        if len(text) > 24:
            blocks[-1] = (ref, text[: int(len(text) * 0.8)] + "…")  # cut the last block by a fifth, retry
        else:
            blocks.pop()
    return render(blocks), [r for r, _ in blocks]


def cited_refs(text: str, allowed: Sequence[str]) -> list[str]:
    """The [source#chunk] keys in `text` that name a chunk it was given (made-up keys are ignored)."""
    seen: list[str] = []
    for ref in _CITE.findall(text):
        if ref in allowed and ref not in seen:
            seen.append(ref)
    return seen


def answer_question(engine, question: str, hits: Sequence[Hit], max_new_tokens: int = 64,
                    temperature: float = 0.0, seed: int | None = 0) -> Answer:
    """Generate an answer to `question` from `hits` with a `scratchlm.engine.LLM` (hits may be empty)."""
    from scratchlm.data.clean import clean_text
    from scratchlm.engine.sampling import SamplingParams

    tok = engine.tokenizer
    if tok is None:
        raise ValueError("rag ask: the run has no tokenizer.json")
    budget = engine.config.max_seq_len - max_new_tokens
    if budget < 16:
        raise ValueError(f"rag ask: max_new_tokens={max_new_tokens} leaves no room in max_seq_len={engine.config.max_seq_len}")
    question = clean_text(question)  # as prepare cleaned the training data (NFKC)

    def encode(messages: list[dict]) -> list[int]:
        msgs = [{**m, "content": clean_text(m["content"])} for m in messages]
        return tok.encode_chat(msgs, add_generation_prompt=True)[0]

    messages, refs = build_messages(question, hits, fit=lambda m: len(encode(m)) <= budget)
    ids = encode(messages)
    if len(ids) > budget:
        raise ValueError(f"rag ask: the question alone is {len(ids)} tokens; the model's context holds {budget} "
                         f"before the answer (max_seq_len {engine.config.max_seq_len} - max_new_tokens {max_new_tokens})")
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    out = engine.generate([ids], params)[0]
    text = tok.decode(out, skip_special_tokens=True).strip()
    return Answer(text=text, sources=refs, cited=cited_refs(text, refs), prompt=messages[0]["content"])
