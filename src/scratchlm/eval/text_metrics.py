"""Generation metrics: exact match, token F1, ROUGE-L (`rouge-score`) and BLEU (`sacrebleu`).

Chinese has no spaces, so both libraries' default tokenisers would see one "word" per sentence (rouge-score
even drops non-ASCII text entirely): text is tokenised by character for CJK and by word for the rest —
`mixed_tokens` for F1 and ROUGE-L (on English alone it equals rouge-score's default tokeniser), sacrebleu's
own "zh" tokeniser (one token per Chinese character, 13a for the rest) for BLEU.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from scratchlm.data.corpus import CJK_RE

_WORD_RE = re.compile(r"[a-z0-9]+")


def mixed_tokens(text: str) -> list[str]:
    """Lower-cased ASCII words and numbers, and each CJK character as a token (punctuation dropped)."""
    out: list[str] = []
    for piece in re.split(f"({CJK_RE.pattern})", text.lower()):
        if not piece:
            continue
        if CJK_RE.fullmatch(piece):
            if unicodedata.category(piece)[0] in "LN":  # ideographs count, CJK punctuation does not
                out.append(piece)
        else:
            out += _WORD_RE.findall(re.sub(r"[^a-z0-9]+", " ", piece))
    return out


class _Tokenizer:
    """rouge-score's tokenizer interface (`tokenize(text) -> list[str]`)."""

    def tokenize(self, text: str) -> list[str]:
        return mixed_tokens(text)


def normalize(text: str) -> str:
    """For exact match: NFKC, lower case, whitespace collapsed, surrounding punctuation and spaces stripped."""
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return text.strip(" .,!?;:'\"，。！？；：、")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over `mixed_tokens` (bag of tokens, counted with multiplicity)."""
    from collections import Counter

    p, r = mixed_tokens(prediction), mixed_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from rouge-score, on `mixed_tokens`."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer()).score(reference, prediction)["rougeL"].fmeasure


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) from sacrebleu; its "zh" tokeniser when any reference has Chinese characters."""
    import sacrebleu

    tok = "zh" if any(CJK_RE.search(r) for r in references) else "13a"
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize=tok).score)


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Mean exact match, token F1 and ROUGE-L, and corpus BLEU, over paired predictions and references."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"generation_scores: {len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "token_f1": sum(map(token_f1, predictions, references)) / n,
        "rougeL": sum(map(rouge_l, predictions, references)) / n,
        "bleu": bleu(predictions, references),
        "n": n,
    }
