"""lm-eval's `custom_dataset` for scratchlm_mc.yaml: the built-in multiple-choice items as a datasets split."""

from __future__ import annotations

from typing import Any


def load_dataset(per_kind: int = 40, split: str = "train", seed: int = 0, **_: Any) -> dict[str, Any]:
    """{"test": Dataset of {"question", "choices", "answer", "subject"}}; extra keys (lm-eval's metadata) ignored."""
    import datasets

    from scratchlm.eval.multiple_choice import builtin_items

    rows = [{"question": it.question, "choices": it.choices, "answer": it.answer, "subject": it.subject}
            for it in builtin_items(per_kind=int(per_kind), split=split, seed=int(seed))]
    return {"test": datasets.Dataset.from_list(rows)}
