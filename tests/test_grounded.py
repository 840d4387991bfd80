"""Grounded-answer SFT tasks (data/grounded.py) and their three-way measurement (eval/grounded.py)."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from scratchlm.data.answers import GROUNDED_TASKS, check_answer
from scratchlm.data.corpus import poems as corpus_poems
from scratchlm.data.grounded import Grounded, counterfactual_poems
from scratchlm.data.rag_prompt import sources_turn
from scratchlm.data.synth import build_synth
from scratchlm.data.tasks import SIDES, verse_lines

_BLOCK = re.compile(r"^\[(\S+#\d+)\] (.*)$", re.M)


@pytest.fixture(scope="module")
def poems():
    return corpus_poems("train")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("grounded")
    build_synth(d, seed=3, tasks={t: (150, 60, 60) for t in GROUNDED_TASKS})
    return {f: [json.loads(x) for x in (d / f"{f}.jsonl").read_text(encoding="utf-8").splitlines()]
            for f in ("sft_train", "sft_val", "sft_test", "prompt_val", "preference_val")}


def _passages(content: str) -> list[tuple[str, str]]:
    return _BLOCK.findall(content)


def test_splits_never_share_a_poem_or_a_line(poems):
    sides = {name: {side: {p["text"] for p in Grounded(name, poems).poems[side]} for side in SIDES}
             for name in GROUNDED_TASKS}
    assert sides["grounded_author"] == sides["grounded_next"] == sides["grounded_title"]  # a poem's side is fixed
    for name in GROUNDED_TASKS:
        t = Grounded(name, poems)
        texts = {side: {p["text"] for p in t.poems[side]} for side in SIDES}
        lines = {side: {line for _, line, _ in t.items[side]} for side in SIDES}
        assert all(t.items[s] for s in SIDES)
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not texts[a] & texts[b] and not lines[a] & lines[b]
        for side in ("val", "test"):  # a held-out passage (gold or distractor) is never a training poem
            rng = random.Random(0)
            for _ in range(50):
                it = t.item(rng, side, "en")
                assert {it.gold[1], *(x for _, x in it.distractors)} <= texts[side]
                assert not any(line in p for p in texts["train"] for line in [it.question.split('"')[1]])


def test_counterfactual_poems_lend_nothing_held_out_and_cannot_be_recalled(poems):
    held_out = [p for p in poems if Grounded.side(p) != "train"]
    train = [p for p in poems if Grounded.side(p) == "train"]
    held_lines = {ln for p in held_out for st in verse_lines(p["text"]) for ln in st}
    made = counterfactual_poems(poems, seed=0, max_chars=60)
    assert len(made) > 100 and made != counterfactual_poems(poems, seed=1, max_chars=60)
    used = [ln for p in made for st in verse_lines(p["text"]) for ln in st]
    assert len(used) == len(set(used))  # each line once: Grounded keeps every one as an item
    assert not set(used) & held_lines  # not even a line a held-out poem shares with a training one
    assert {p["title"] for p in made} <= {p["title"] for p in train}
    assert {p["author"] for p in made} <= {p["author"] for p in train}
    for p in made:
        assert len(p["text"]) <= 60 and p["text"].startswith(f"《{p['title']}》\n作者：{p['author']}\n")
        assert len(verse_lines(p["text"])[0]) >= 2  # a next line to ask for
    # the point: a made-up poem's poet is not the poet of the real poem its lines come from, in most poems
    real_author = {ln: p["author"] for p in train for st in verse_lines(p["text"]) for ln in st}
    same = sum(real_author.get(verse_lines(p["text"])[0][0]) == p["author"] for p in made)
    assert same < 0.1 * len(made)
    for name in GROUNDED_TASKS:
        t = Grounded(name, made, max_chars=60, n_distractors=(1, 1))
        ex = t.item(random.Random(0), "train", "zh")
        assert ex.answer in ex.gold[1] and ex.line in ex.gold[1]


def test_user_turn_is_rag_asks_rendering_with_the_gold_among_distractors(poems):
    from scratchlm.rag.answer import build_messages
    from scratchlm.rag.store import Hit

    for name in GROUNDED_TASKS:
        t = Grounded(name, poems)
        for lang in ("en", "zh"):
            for seed in range(20):
                rng = random.Random(seed)
                it = t.item(rng, "train", lang)
                blocks = it.passages(rng)
                ex = t.sample(random.Random(seed), "train", lang)  # the same draws: the same item and order
                # exactly what `rag ask` sends for these passages as retrieved hits
                hits = [Hit(i, ref.rpartition("#")[0], int(ref.rpartition("#")[2]), text, 0.0)
                        for i, (ref, text) in enumerate(blocks)]
                assert build_messages(it.question, hits)[0][0]["content"] == ex.question
                assert [(r, " ".join(x.split())) for r, x in blocks] == _passages(ex.question)
                assert 2 <= len(blocks) <= 3 and it.gold in blocks
                assert ex.reply.endswith(f"[{it.gold[0]}]") and it.line in it.question
                assert ex.answer in it.gold[1] and it.line in it.gold[1]  # read from the gold passage...
                assert not any(it.line in x for _, x in it.distractors)  # ...which the quoted line picks out
                if name == "grounded_next":
                    assert it.gold[1].index(it.line) < it.gold[1].index(it.answer)


def test_answers_check_and_wrong_passages_fail(built):
    n = 0
    for row in built["preference_val"]:
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        ans = next(p["answer"] for p in built["prompt_val"] if p["prompt"][0]["content"] == row["chosen"][0]["content"])
        assert check_answer(row["task"], chosen, ans)
        assert not check_answer(row["task"], rejected, ans)
        n += 1
    assert n == 180
    assert check_answer("grounded_author", "李白 [poems.jsonl:3#0]", "李白")
    assert check_answer("grounded_title", "《静夜思》 [notes.md#1]", "静夜思")
    assert check_answer("grounded_title", "出自《静夜思》。", "静夜思")
    assert not check_answer("grounded_title", "[notes.md#1]", "静夜思")
    assert check_answer("grounded_next", "疑是地上霜。[a.jsonl:1#0]", "疑是地上霜。")
    assert not check_answer("grounded_next", "疑是地上霜，举头望明月。", "疑是地上霜。")


def test_rows_render_through_encode_chat_and_only_the_answer_is_learnt(built, tmp_path):
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    text = tmp_path / "t.txt"
    text.write_text("\n".join(m["content"] for r in built["sft_train"][:50] for m in r["conversations"]),
                    encoding="utf-8")
    tok = Tokenizer.load(train_tokenizer(tmp_path / "tok", vocab_size=400, inputs=[text], show_progress=False))
    row = next(r for r in built["sft_train"] if len(r["conversations"]) == 2)
    ids, mask = tok.encode_chat(row["conversations"])
    learnt = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
    assert learnt == row["conversations"][1]["content"]
    assert {r["lang"] for r in built["sft_val"]} == {"en", "zh"}
    assert {r["task"] for r in built["sft_test"]} == set(GROUNDED_TASKS)


def test_sources_turn_is_the_one_rendering():
    from scratchlm.rag import answer

    assert answer.sources_turn is sources_turn and answer.TEMPLATES is sources_turn.__globals__["TEMPLATES"]
    msgs = sources_turn("Who wrote it?", [("a.md#0", "some  text\nhere")])
    assert msgs[0]["content"].startswith("Sources:\n[a.md#0] some text here\n\nQuestion: Who wrote it?")
    assert sources_turn("谁写的？", []) == [{"role": "user", "content": "谁写的？"}]


@pytest.fixture(scope="module")
def grounded_run(tmp_path_factory, poems):
    """A tiny model that learnt one held-out item with its gold passage (the answer) and the bare question
    (a refusal): gold-passage accuracy 1, closed-book 0."""
    from ground_util import make_chat_run
    from scratchlm.data.clean import clean_text
    from scratchlm.eval.grounded import grounded_items
    from scratchlm.rag.answer import build_messages
    from scratchlm.rag.store import Hit

    it = grounded_items("val", 1, seed=0, poems=poems, tasks=("grounded_author",))[0]
    src, _, idx = it.gold[0].rpartition("#")
    q = clean_text(it.question)
    with_gold = build_messages(q, [Hit(0, src, int(idx), it.gold[1], 0.0)])[0]
    chats = [(with_gold + [{"role": "assistant", "content": it.reply}], None),
             ([{"role": "user", "content": q}, {"role": "assistant", "content": "I do not know."}], None)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_chat_run(tmp_path_factory.mktemp("grounded_run"), chats, max_seq_len=1024), it
    finally:
        torch.set_num_threads(n)


def test_grounded_accuracy_three_ways(grounded_run, tmp_path):
    from scratchlm.engine.offline import LLM
    from scratchlm.eval.grounded import grounded_accuracy

    run, it = grounded_run
    llm = LLM.from_run(run, "cpu")
    # BM25 over the corpus (the hash embedder is a stand-in for e5; dense hash vectors favour English words)
    out = grounded_accuracy(llm, [it], tmp_path, embedder="hash", n_en_docs=50, search_mode="bm25")
    assert out["gold"]["all"] == 1.0 and out["gold"][it.lang] == 1.0 and out["gold"][it.task] == 1.0, out["samples"]
    assert out["closed_book"]["all"] == 0.0
    # the real retriever over the built-in corpus finds the quoted line's poem
    assert out["gold_retrieved"]["all"] == 1.0
    assert set(out["retrieval"]) == {"all", it.lang, it.task}
    again = grounded_accuracy(llm, [it], tmp_path, embedder="hash", n_en_docs=50, modes=("gold",))
    assert again["gold"]["all"] == 1.0 and "retrieval" not in again
    with pytest.raises(ValueError, match="unknown modes"):
        grounded_accuracy(llm, [it], tmp_path, modes=("open",))
