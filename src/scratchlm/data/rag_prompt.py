"""The one text of a question asked with retrieved sources: `[source#chunk] text` blocks above the question, in
the user turn. `scratchlm rag ask`, the server's `--rag-db` (both through `rag.answer.build_messages`) and the
grounded-answer SFT data (data/grounded.py) all render it here, so the model is trained on the prompt it is
served. It lives in data/ (below rag/) because the data generators may not import rag/."""

from __future__ import annotations

import re
from typing import Sequence

_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")

TEMPLATES = {
    "en": ("Sources:\n{context}\n\nQuestion: {question}\nAnswer from the sources and cite them like [{example}].",
           "{question}"),
    "zh": ("资料：\n{context}\n\n问题：{question}\n请根据资料回答，并注明出处，如 [{example}]。", "{question}"),
}


def question_lang(question: str) -> str:
    """"zh" when the question has Chinese characters, else "en" (picks the prompt's language)."""
    return "zh" if _CJK.search(question) else "en"


def sources_turn(question: str, blocks: Sequence[tuple[str, str]]) -> list[dict]:
    """The user turn asking `question` with `blocks` of (ref, text) above it, best first (none: the bare
    question). Whitespace inside a block's text is collapsed to single spaces, as retrieved chunks are shown."""
    template, bare = TEMPLATES[question_lang(question)]
    blocks = [(ref, " ".join(text.split())) for ref, text in blocks]
    if not blocks:
        return [{"role": "user", "content": bare.format(question=question)}]
    context = "\n".join(f"[{ref}] {text}" for ref, text in blocks)
    return [{"role": "user", "content": template.format(context=context, question=question, example=blocks[0][0])}]
