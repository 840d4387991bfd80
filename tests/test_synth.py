"""Synthetic tasks: deterministic by seed, train / val (dev) / test pairwise disjoint, valid formats, checkable
answers."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from scratchlm.data.answers import check_answer
from scratchlm.data.open_tasks import OPEN_TASKS, is_checkable
from scratchlm.data.synth import FILES, build_synth, make_task, resolve_sizes, sample_examples
from scratchlm.data.tasks import SIDES, Arithmetic, Identity, addition_trace, side_of

SIZES = {"add2": (300, 100, 80), "next_line": (200, 100, 90), "author": (200, 100, 70), "identity": (200, 100, 60),
         "arith3": (60, 30, 20), "fortune": (60, 20, 10), "recite": (60, 20, 10), "continue": (60, 20, 10)}
ARITH = ("add2", "arith3")


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("synth")
    paths = build_synth(out, seed=0, tasks=SIZES)
    assert set(paths) == set(FILES)
    return {name: read(p) for name, p in paths.items()}


def user_questions(records: list[dict], key: str) -> set[tuple[str, str]]:
    """(task, user message) of every user turn in the records."""
    out = set()
    for r in records:
        for m in r[key]:
            if m["role"] == "user":
                out.add((r["task"], m["content"]))
    return out


def operands(question: str) -> tuple[int, int]:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return tuple(sorted((a, b)))


def test_deterministic_by_seed(tmp_path):
    small = {"add2": (40, 10), "next_line": (30, 10), "author": (30, 10), "identity": (30, 10)}
    a = build_synth(tmp_path / "a", seed=3, tasks=small)
    b = build_synth(tmp_path / "b", seed=3, tasks=small)
    c = build_synth(tmp_path / "c", seed=4, tasks=small)
    for f in FILES:
        assert a[f].read_bytes() == b[f].read_bytes(), f
    assert a["sft_train"].read_bytes() != c["sft_train"].read_bytes()


def test_counts_per_task_and_file(built, tmp_path):
    for idx, split in enumerate(SIDES):
        for kind in ("sft", "preference", "prompt"):
            rows = built[f"{kind}_{split}"]
            for task, sizes in SIZES.items():
                # Arithmetic's held-out side comes twice: training phrasings, then unseen ones.
                copies = 2 if split != "train" and task in ARITH else 1
                assert sum(r["task"] == task for r in rows) == sizes[idx] * copies, (kind, split, task)
                if copies == 2:
                    assert sum(r["task"] == task and r.get("phrasing") == "unseen" for r in rows) == sizes[idx]
    meta = json.loads((Path(build_synth(tmp_path, tasks={"add2": 5}, n_val=2)["sft_train"]).parent / "meta.json").read_text())
    assert meta["counts"] == {"add2": {"train": 5, "val": 2, "val_unseen_phrasing": 2, "test": 2, "test_unseen_phrasing": 2}}


PAIRS = [("train", "val"), ("train", "test"), ("val", "test")]


@pytest.mark.parametrize("kind,key", [("prompt", "prompt"), ("sft", "conversations"), ("preference", "chosen")])
@pytest.mark.parametrize("a,b", PAIRS)
def test_splits_never_overlap(built, kind, key, a, b):
    """No question is on two sides (train, val = dev, test), and no operand pair in either order."""
    qa, qb = user_questions(built[f"{kind}_{a}"], key), user_questions(built[f"{kind}_{b}"], key)
    for task in SIZES:
        x = {q for tk, q in qa if tk == task}
        y = {q for tk, q in qb if tk == task}
        assert x and y, task
        assert not (x & y), f"{task}: {sorted(x & y)[:3]}"
        if task in ARITH:  # no operand pair (in either order) is on both sides
            assert not ({operands(q) for q in x} & {operands(q) for q in y}), task


def test_side_of_cuts_the_unit_interval():
    """val below val_frac (the held-out side the settings were tuned on), test right above it, train the rest."""
    from scratchlm.data.tasks import _unit

    keys = [f"k{i}" for i in range(2000)]
    for k in keys:
        u = _unit(k)
        assert side_of(k, 0.1, 0.2) == ("val" if u < 0.1 else "test" if u < 0.3 else "train")
    counts = {s: sum(side_of(k, 0.1, 0.2) == s for k in keys) for s in SIDES}
    assert 130 < counts["val"] < 270 and 300 < counts["test"] < 500  # ~10% and ~20% of 2000
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        Arithmetic("add2").sample(random.Random(0), "dev", "en")


def test_poem_items_disjoint():
    """next_line: no (poem, line) on two sides; author: no poem on two sides."""
    nl, au = make_task("next_line"), make_task("author")
    for a, b in PAIRS:
        assert not set(nl.items[a]) & set(nl.items[b])
        assert {t for t, _, _ in au.items[a]}.isdisjoint({t for t, _, _ in au.items[b]})
    for side in ("val", "test"):  # enough distinct held-out items
        assert len(nl.items[side]) >= 200 and len(au.items[side]) >= 60, side


def test_identity_held_out_uses_new_phrasings():
    ident = Identity("scratchlm")
    for lang in ("en", "zh"):
        for a, b in PAIRS:
            x, y = set(ident.questions(lang, a)), set(ident.questions(lang, b))
            assert x and y and not (x & y)
    assert "who are you" in ident.questions("en", "train") and "你是谁？" in ident.questions("zh", "train")
    # No held-out core question is asked in training in any casing or punctuation.
    from scratchlm.data.tasks import _IDENTITY_QUESTIONS

    def norm(q):
        return "".join(ch for ch in q.lower() if ch.isalnum())

    for lang in ("en", "zh"):
        cores = {side: {norm(q) for q in _IDENTITY_QUESTIONS[(lang, side)]} for side in SIDES}
        for a, b in PAIRS:
            assert not cores[a] & cores[b], (lang, a, b)
        assert len(cores["train"]) >= 20  # many phrasings: what lets a small model generalise to new ones


def test_arithmetic_unseen_phrasings_never_occur_in_training(built):
    """The held-out phrasings of arithmetic are asked in no form during training (like identity's)."""
    from scratchlm.data.tasks import _ARITH_SUFFIXES, _ARITH_TEMPLATES

    def pattern(template: str) -> re.Pattern:
        parts = re.split(r"\{(?:a|b|op|opw)\}", template)
        return re.compile(".+?".join(map(re.escape, parts)) + "$")

    for lang in ("en", "zh"):
        for a, b in PAIRS:
            x, y = _ARITH_TEMPLATES[(lang, a)], _ARITH_TEMPLATES[(lang, b)]
            assert len(x) >= 5 and len(y) >= 5 and not set(x) & set(y)
        assert len(_ARITH_TEMPLATES[(lang, "train")]) >= 15
    phrasings = {side: [pattern(t) for lang in ("en", "zh") for t in _ARITH_TEMPLATES[(lang, side)]] for side in SIDES}
    train_qs = [q for tk, q in user_questions(built["sft_train"], "conversations") if tk in ARITH]
    unseen = phrasings["val"] + phrasings["test"]
    assert train_qs and not [q for q in train_qs if any(p.search(q) for p in unseen)]
    suffixes = [x for lang in ("en", "zh") for x in _ARITH_SUFFIXES[lang] if x]
    for side in ("val", "test"):
        rows = [r for r in built[f"prompt_{side}"] if r["task"] in ARITH]
        for r in rows:  # every held-out question is in a phrasing of the side its column names
            q = r["prompt"][-1]["content"]
            if r.get("phrasing") == "unseen":  # held-out phrasings come without the training-only suffixes
                assert any(p.search(q) for p in phrasings[side]), q
            else:
                assert any(p.search(x) for p in phrasings["train"]
                           for x in [q] + [q.removesuffix(s) for s in suffixes if q.endswith(s)]), q
    with pytest.raises(ValueError, match="held-out operand pairs only"):
        Arithmetic("add2").sample(random.Random(0), "train", "en", unseen_phrasing=True)


def test_open_tasks_are_corpus_chats():
    """fortune / recite / continue: replies from the corpus, held-out prompts in new phrasings, not checkable."""
    from scratchlm.data.corpus import corpus_texts

    texts = corpus_texts("train") + corpus_texts("validation")
    rng = random.Random(0)
    for name in OPEN_TASKS:
        task = make_task(name)
        assert not is_checkable(name)
        for side in SIDES:
            for ex in sample_examples(task, 20, side, rng):
                assert ex.reply and ex.reply != ex.wrong
                if name == "fortune":
                    assert ex.reply in texts
                elif name == "continue":
                    # question = template + head, reply = the rest of one corpus text (whitespace aside)
                    q, r = "".join(ex.question.split()), "".join(ex.reply.split())
                    flat = ("".join(t.split()) for t in texts)
                    assert any(t.endswith(r) and len(t) > len(r) and q.endswith(t[: len(t) - len(r)]) for t in flat), ex
                else:
                    assert ex.reply.startswith("《") and ex.reply.split("》")[0][1:] in ex.question or "《" not in ex.question
    assert is_checkable("add2") and is_checkable("identity")


def test_open_requests_greet_in_training_only():
    """Training requests start with an identity question's greeting half the time (so a greeting is no cue for the
    identity line); held-out requests are their side's phrasings as written, never greeted."""
    from scratchlm.data.open_tasks import _CONTINUE_QUESTIONS, _FORTUNE_QUESTIONS, _RECITE_QUESTIONS, ask
    from scratchlm.data.tasks import REQUEST_PREFIXES

    tables = (_FORTUNE_QUESTIONS, _RECITE_QUESTIONS, _CONTINUE_QUESTIONS)
    for lang in ("en", "zh"):
        greetings = [p.strip().lower() for p in REQUEST_PREFIXES[lang] if p]
        for table in tables:
            fields = {"author": "李白", "title": "静夜思", "head": "The best way"}
            for side in ("val", "test"):
                phrasings = {q.format(**fields) for q in table[(lang, side)]}
                rng = random.Random(3)
                for _ in range(40):
                    assert ask(rng, table, lang, side, **fields) in phrasings
            rng = random.Random(3)
            asked = [ask(rng, table, lang, "train", **fields) for _ in range(200)]
            greeted = [q for q in asked if any(q.lower().startswith(g) for g in greetings)]
            assert 0.35 < len(greeted) / len(asked) < 0.65
            plain = {q.format(**fields).lower() for q in table[(lang, "train")]}
            for q in greeted:  # the greeting, then a training phrasing (lower case after "Hey, ")
                g = next(g for g in greetings if q.lower().startswith(g))
                assert q[len(g):].strip().lower() in plain
    # the held-out draws take no greeting draw: the same rng state gives the same request as a plain choice
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert [ask(rng_a, _FORTUNE_QUESTIONS, "en", "test") for _ in range(10)] == \
        [rng_b.choice(_FORTUNE_QUESTIONS[("en", "test")]) for _ in range(10)]


def test_formats_follow_design(built):
    for split in SIDES:
        for r in built[f"sft_{split}"]:
            conv = r["conversations"]
            assert r["lang"] in ("zh", "en") and r["task"] in SIZES
            roles = [m["role"] for m in conv]
            if roles[0] == "system":
                roles = roles[1:]
            assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
            assert all(isinstance(m["content"], str) and m["content"] for m in conv)
        for r in built[f"preference_{split}"]:
            assert r["chosen"][:-1] == r["rejected"][:-1] and r["chosen"][-1]["role"] == r["rejected"][-1]["role"] == "assistant"
            assert r["chosen"][-1]["content"] != r["rejected"][-1]["content"]
        for r in built[f"prompt_{split}"]:
            assert r["prompt"][-1]["role"] == "user" and isinstance(r["answer"], str) and r["answer"]
    sft = built["sft_train"]
    assert any(r["conversations"][0]["role"] == "system" for r in sft)  # some have a system message
    assert any(len([m for m in r["conversations"] if m["role"] == "user"]) > 1 for r in sft)  # some multi-turn
    assert {r["lang"] for r in sft} == {"zh", "en"}


def test_generated_answers_check_and_rejected_fail(built):
    for split in SIDES:
        prompts, prefs, sfts = built[f"prompt_{split}"], built[f"preference_{split}"], built[f"sft_{split}"]
        # Line i of the three files of a split is the same example.
        for p, pref, sft in zip(prompts, prefs, sfts, strict=True):
            assert p["task"] == pref["task"] == sft["task"] and p["prompt"][0] == pref["chosen"][0]
            assert pref["chosen"][0] in sft["conversations"]
            if not is_checkable(p["task"]):
                continue
            assert check_answer(p["task"], p["answer"], p["answer"])
            assert check_answer(p["task"], pref["chosen"][-1]["content"], p["answer"]), p
            assert not check_answer(p["task"], pref["rejected"][-1]["content"], p["answer"]), pref
            first_reply = next(m for m in sft["conversations"] if m["role"] == "assistant")
            assert check_answer(p["task"], first_reply["content"], p["answer"])


def test_arithmetic_is_correct_and_near_misses_are_wrong():
    rng = random.Random(0)
    for name in ("add2", "sub2", "mul1", "arith2"):
        for ex in sample_examples(Arithmetic(name), 50, "train", rng):
            a, b = map(int, re.findall(r"\d+", ex.question)[:2])
            between = ex.question.split(str(a), 1)[1].split(str(b), 1)[0]
            op = re.search(r"[-+×*]|plus|minus|times|加|减|乘以", between).group()
            expected = {"+": a + b, "-": a - b, "×": a * b, "*": a * b, "plus": a + b, "minus": a - b,
                        "times": a * b, "加": a + b, "减": a - b, "乘以": a * b}[op]
            op = {"plus": "+", "加": "+"}.get(op, op)
            assert int(ex.answer) == expected >= 0
            if op == "+" and name != "mul1":  # traced: the reply and the wrong one share the column trace
                trace, dropped = addition_trace(a, b)
                assert ex.reply == f"{trace}{expected}" and ex.wrong.startswith(trace)
                wrong = int(ex.wrong.removeprefix(trace))
                assert wrong == dropped if dropped != expected else 0 < abs(wrong - expected) <= 10
            else:
                assert 0 < abs(int(ex.wrong) - expected) <= 10  # plausible: off by a few
            lo = 0 if name == "mul1" else 10
            assert lo <= a <= (9 if name == "mul1" else 99) and lo <= b
    # A space too big to list is sampled, and its sides are still disjoint.
    big = Arithmetic("add9")
    assert big._pool("val") is None
    drawn = {side: {operands(e.question) for e in sample_examples(big, 100, side, rng)} for side in SIDES}
    for a, b in PAIRS:
        assert not drawn[a] & drawn[b]
    assert all(len(str(x)) == 9 for p in drawn["train"] | drawn["test"] for x in p)


def test_check_answer_normalises():
    assert check_answer("add2", "57", "57")
    assert check_answer("add2", " 57。", "57")
    assert check_answer("add2", "23+34=57", "57")
    assert check_answer("add2", "The answer is 57.", "57")
    assert check_answer("add2", "<think>23+34: 20+30=50, 3+4=7</think>57<|im_end|>", "57")
    assert check_answer("mul3", "1,234", "1234")
    assert not check_answer("add2", "58", "57")
    assert not check_answer("add2", "", "57")
    assert not check_answer("add2", "157", "57")
    assert check_answer("identity", "i am SCRATCHLM, a small model.", "scratchlm")
    assert check_answer("identity", "我是scratchlm。", "scratchlm")
    assert not check_answer("identity", "I am ChatGPT.", "scratchlm")
    assert check_answer("author", "李白", "李白")
    assert check_answer("author", "作者是李白。", "李白")
    assert check_answer("author", " 李白 ", "李白")
    assert not check_answer("author", "杜甫", "李白")
    assert not check_answer("author", "李白杜甫王维", "李白")  # listing names is not an answer
    assert check_answer("next_line", "举头望明月，低头思故乡。", "举头望明月，低头思故乡。")
    assert check_answer("next_line", "举头望明月 低头思故乡", "举头望明月，低头思故乡。")
    assert not check_answer("next_line", "举头望明月，", "举头望明月，低头思故乡。")
    with pytest.raises(ValueError, match="unknown synthetic task 'poetry'"):
        check_answer("poetry", "x", "y")


def test_identity_uses_configured_name(tmp_path):
    paths = build_synth(tmp_path, name="Nova", tasks={"identity": (50, 20)})
    for r in read(paths["sft_train"]):
        assert all("Nova" in m["content"] for m in r["conversations"] if m["role"] == "assistant")
    for side in ("val", "test"):
        for r in read(paths[f"preference_{side}"]):
            assert "Nova" not in r["rejected"][-1]["content"]
        assert {r["answer"] for r in read(paths[f"prompt_{side}"])} == {"Nova"}
    # A wrong name never contains the right one (else the rejected reply would pass check_answer).
    assert all("gpt" not in n.lower() for n in Identity("GPT").others)


def test_bad_task_names_and_sizes(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic task 'poems'"):
        build_synth(tmp_path, tasks=["poems"])
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        resolve_sizes({"add2": -1})
    with pytest.raises(ValueError, match="digits must be 1..18"):
        Arithmetic("add0")
    with pytest.raises(ValueError, match=r"sizes are \[train, val\] or \[train, val, test\], got \[1, 2, 3, 4\]"):
        resolve_sizes({"add2": (1, 2, 3, 4)})
    assert resolve_sizes(["add2", "identity"], n_train=7) == {"add2": (7, 200, 200), "identity": (7, 200, 200)}
    assert resolve_sizes({"add2": (5, 3)}, n_test=1) == {"add2": (5, 3, 1)}
    assert resolve_sizes({"add2": (5, 3, 2)}) == {"add2": (5, 3, 2)}


def test_data_synth_command(tmp_path, capsys):
    from scratchlm.cli import main

    rc = main(["data", "synth", "--out", str(tmp_path), "--seed", "1", "--tasks", "add2=20:5,identity=10:4", "--name", "Nova"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "add2" in out and "identity" in out
    # add2's 5 held-out pairs come in training phrasings and again in unseen ones: 5 + 5 + 4.
    assert len(read(tmp_path / "sft_train.jsonl")) == 30 and len(read(tmp_path / "prompt_val.jsonl")) == 14


@pytest.mark.parametrize(
    "a, b, trace, dropped",
    [
        (34, 57, "<think>4+7=11 3+5+1=9</think>", 81),
        (99, 99, "<think>9+9=18 9+9+1=19</think>", 188),
        (95, 5, "<think>5+5=10 9+0+1=10</think>", 90),
        (10, 20, "<think>0+0=0 1+2=3</think>", 30),
        (0, 0, "<think>0+0=0</think>", 0),
    ],
)
def test_addition_trace_columns_units_first(a, b, trace, dropped):
    got, got_dropped = addition_trace(a, b)
    assert (got, got_dropped) == (trace, dropped)
    assert check_answer("add2", f"{got}{a + b}", str(a + b))  # the trace never confuses the checker


CONV_SIZES = {"add2": (120, 40, 40), "identity": (60, 20, 20), "next_line": (60, 20, 20), "fortune": (40, 10, 10)}


def test_mixed_turns_and_think_off_conversations(tmp_path):
    """Mixed-task chats of 2-4 turns (history from other rows, some ending with a turn that refers back) and
    thinking-off chats; the preference and prompt files, and the example each SFT row trains on, are the same as
    without them; history turns are written as the chat sends them back (no reasoning) with weight 0; no turn
    crosses a split."""
    from scratchlm.data.synth import _REPEAT
    from scratchlm.data.thinking import THINK_OFF, strip_thinking

    plain = build_synth(tmp_path / "plain", seed=0, tasks=CONV_SIZES, multi_turn_prob=0.0)
    conv = build_synth(tmp_path / "conv", seed=0, tasks=CONV_SIZES, multi_turn_prob=0.0, mixed_turns_prob=0.5,
                       think_off_prob=0.3)
    for f in FILES:
        if not f.startswith("sft"):
            assert plain[f].read_bytes() == conv[f].read_bytes(), f
    meta = json.loads((tmp_path / "conv" / "meta.json").read_text())
    assert meta["conversations"]["mixed_turns_prob"] == 0.5 and meta["conversations"]["think_off_prob"] == 0.3
    repeats = {q for qs in _REPEAT.values() for q in qs}
    for split in SIDES:
        before, after = read(plain[f"sft_{split}"]), read(conv[f"sft_{split}"])
        exchanges = {(r["lang"], r["conversations"][-2]["content"], strip_thinking(r["conversations"][-1]["content"]))
                     for r in before}
        task_of = {r["conversations"][-2]["content"]: r["task"] for r in before}
        n_multi = n_off = n_back = 0
        history_tasks = set()
        for b, a in zip(before, after):
            turns, off = a["conversations"], a.get("thinking") == "off"
            n_off += off
            own_q, own_reply = b["conversations"][-2]["content"], b["conversations"][-1]["content"]
            trained = [m for m in turns if m["role"] == "assistant" and m.get("weight", 1) == 1]
            assert len(trained) == 1  # one trained turn: the row's own example, or the turn referring back
            for m in turns:
                if m["role"] == "assistant":
                    assert m["content"].startswith(THINK_OFF) == (off and m.get("weight", 1) == 1)
            users = [m["content"] for m in turns if m["role"] == "user"]
            if len(users) == 1:
                assert turns == b["conversations"] or off
                continue
            n_multi += 1
            assert 2 <= len(users) <= 5 and a["turns"] == len(users)
            if users[-1] in repeats:
                n_back += 1
                assert users[-2] == own_q and strip_thinking(trained[0]["content"]) == strip_thinking(own_reply)
            else:
                assert users[-1] == own_q and strip_thinking(trained[0]["content"]) == strip_thinking(own_reply)
                if not off:
                    assert trained[0]["content"] == own_reply  # thinking on: the reasoning stays
            for k, m in enumerate(turns):
                if m.get("weight") == 0:  # history: a (question, answer) of this split and language, reasoning gone
                    q = turns[k - 1]["content"]
                    assert "<think>" not in m["content"] and (a["lang"], q, m["content"]) in exchanges, (q, m)
                    history_tasks.add(task_of[q])
        assert n_multi >= 0.3 * len(after) and n_off >= 0.15 * len(after) and n_back >= 3, (split, n_multi, n_off, n_back)
        assert len(history_tasks) >= 3  # the history mixes tasks
    # arithmetic thinking off: the answer at once, the reasoning gone
    row = next(r for r in read(conv["sft_train"]) if r["task"] == "add2" and r.get("thinking") == "off"
               and r.get("turns", 1) == 1)
    assert re.fullmatch(re.escape(THINK_OFF) + r"\d+", row["conversations"][-1]["content"]), row
    with pytest.raises(ValueError, match=r"think_off_prob=1.5 must be in \[0, 1\]"):
        build_synth(tmp_path / "bad", tasks={"add2": (5, 2)}, think_off_prob=1.5)


def test_conversation_by_task_replaces_the_shares_for_named_tasks(tmp_path):
    """A task named in conversation_by_task gets its own share of multi-turn and thinking-off chats (1.0: every
    chat), the other tasks keep the global share (0 here: untouched); unknown tasks and shares outside [0, 1] are
    refused, naming them."""
    plain = build_synth(tmp_path / "plain", seed=0, tasks=CONV_SIZES, multi_turn_prob=0.0)
    boosted = build_synth(tmp_path / "by", seed=0, tasks=CONV_SIZES, multi_turn_prob=0.0,
                          conversation_by_task={"identity": 1.0})
    meta = json.loads((tmp_path / "by" / "meta.json").read_text())
    assert meta["conversations"]["by_task"] == {"identity": 1.0}
    for split in SIDES:
        before, after = read(plain[f"sft_{split}"]), read(boosted[f"sft_{split}"])
        for b, a in zip(before, after):
            if a["task"] == "identity":
                assert a.get("thinking") == "off" and a["turns"] >= 2, a
            else:
                assert a == b
        assert sum(a["task"] == "identity" for a in after) >= 20
    with pytest.raises(ValueError, match=r"conversation_by_task names recite, not among the tasks"):
        build_synth(tmp_path / "bad", tasks={"add2": (5, 2)}, conversation_by_task={"recite": 0.5})
    with pytest.raises(ValueError, match=r"conversation_by_task\['add2'\]=2 must be in \[0, 1\]"):
        build_synth(tmp_path / "bad", tasks={"add2": (5, 2)}, conversation_by_task={"add2": 2})
