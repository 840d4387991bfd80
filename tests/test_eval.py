"""eval/: perplexity and bits per byte against a by-hand NLL, multiple choice with a rigged model and the
published file layouts, text metrics against rouge-score and sacrebleu, and `scratchlm eval` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.shards.writer import ShardWriter
from scratchlm.eval.evaluate import parse_tasks
from scratchlm.eval.multiple_choice import (McItem, builtin_items, encode_pair, load_mc, score_mc)
from scratchlm.eval.perplexity import nll_and_bytes, token_bytes
from scratchlm.eval.text_metrics import bleu, exact_match, generation_scores, rouge_l, token_f1
from scratchlm.model.transformer import Transformer
from scratchlm.runs import save_run
from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = "床前明月光，疑是地上霜。\nThe cat sat on the mat; <think>ok</think> 42!"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.load(train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512, show_progress=False))


def random_model(*overrides):
    torch.manual_seed(0)
    return Transformer(load_config("debug", ["model.init_std=0.1", *overrides]).model).eval()


def test_token_bytes_add_up_to_the_text(tok):
    nb = token_bytes(tok)
    assert int(nb[tok.encode(TEXT)].sum()) == len(TEXT.encode("utf-8"))
    assert nb[tok.eos_id] == 0 and nb[tok.token_to_id("<think>")] == len("<think>")


def test_perplexity_and_bits_per_byte_from_a_by_hand_nll(tok):
    model = random_model()
    stream = np.array(([tok.endoftext_id] + tok.encode(TEXT)) * 6)
    seq = 32
    got = nll_and_bytes(model, stream, seq, token_bytes(tok), max_windows=3)
    nll, text_nll, n = 0.0, 0.0, 0
    for w in range(3):
        x = torch.tensor(stream[w * seq: w * seq + seq + 1])
        with torch.no_grad():
            logp = torch.log_softmax(model(x[None, :-1]).logits[0].double(), -1)
        for t in range(seq):
            target = int(x[t + 1])
            nll -= float(logp[t, target])
            n += 1
            if target != tok.endoftext_id:  # a control token is no text: no bytes, not in bpb
                text_nll -= float(logp[t, target])
    assert got["tokens"] == n == 96
    assert got["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    # bytes of the predicted tokens from the token table (test_token_bytes_add_up_to_the_text ties it to the
    # text's UTF-8; a window edge may cut a character, so the decoded window text is not the measure)
    nb = token_bytes(tok)
    targets = np.concatenate([stream[w * seq + 1: w * seq + seq + 1] for w in range(3)])
    assert got["bytes"] == int(nb[targets].sum())
    assert got["bpb"] == pytest.approx(text_nll / (math.log(2) * got["bytes"]), rel=1e-5)


def rigged_model(tok, favourite: int):
    """A real Transformer whose every prediction is `favourite`: the blocks add nothing (output projections
    zeroed), every input embeds to the same vector e, and the untied head's row `favourite` is 20·e."""
    model = random_model("model.tie_embeddings=false")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.wo.weight", "ffn.w2.weight")):
                p.zero_()
        e = torch.randn(model.config.d_model)
        model.embed.weight.copy_(e.expand_as(model.embed.weight))
        model.lm_head.weight.mul_(0.01)
        model.lm_head.weight[favourite] = 20 * e / e.norm()
    return model


def test_rigged_model_picks_the_rigged_answer(tok):
    z = tok.encode("~")[0]
    rigged = tok.decode([z, z, z])
    assert tok.encode("Q:" + rigged)[-3:] == [z, z, z]
    items = [McItem("Q:", ["abc", "hello", rigged, "xyz"], 2), McItem("Q:", [rigged, "no"], 1)]
    out = score_mc(rigged_model(tok, z), tok, items)
    assert out["predictions"] == [2, 0] and out["acc"] == 0.5 and out["n"] == 2


def test_encode_pair_moves_trailing_space_like_lm_eval(tok):
    ctx, cont = encode_pair(tok, "Who said it? --  ", "Mark")
    assert ctx == tok.encode("Who said it? --") and ctx + cont == tok.encode("Who said it? --  Mark")


def test_published_layouts_and_jsonl(tmp_path):
    mmlu = tmp_path / "mmlu" / "test"
    mmlu.mkdir(parents=True)
    (mmlu / "astronomy_test.csv").write_text('"What is 2+2, ""roughly""?",3,4,5,6,B\nSun?,star,planet,moon,comet,A\n')
    ceval = tmp_path / "ceval_val.csv"
    ceval.write_text("id,question,A,B,C,D,answer,explanation\n0,床前明月光的作者是,杜甫,李白,王维,白居易,B,\n", encoding="utf-8")
    cmmlu = tmp_path / "cmmlu" / "chinese_literature.csv"
    cmmlu.parent.mkdir()
    cmmlu.write_text(",Question,A,B,C,D,Answer\n0,《静夜思》的作者是,李白,杜甫,王维,孟浩然,A\n", encoding="utf-8")
    items = load_mc(tmp_path / "mmlu")
    assert [(i.question, i.choices, i.answer, i.subject) for i in items] == [
        ('What is 2+2, "roughly"?', ["3", "4", "5", "6"], 1, "astronomy"), ("Sun?", ["star", "planet", "moon", "comet"], 0, "astronomy")]
    (c,) = load_mc(ceval)
    assert (c.question, c.choices[c.answer], c.subject) == ("床前明月光的作者是", "李白", "ceval")
    (m,) = load_mc(tmp_path / "cmmlu", layout="cmmlu")
    assert (m.question, m.choices[m.answer], m.subject) == ("《静夜思》的作者是", "李白", "chinese_literature")
    bad = tmp_path / "bad_test.csv"
    bad.write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"bad_test.csv:2: answer 'E'"):
        load_mc(bad)
    js = tmp_path / "x.jsonl"
    js.write_text('{"question": "q", "choices": ["a", "b"], "answer": "B"}\n{"question": "q", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: field 'choices'"):
        load_mc(js)


def test_builtin_set_is_bilingual_and_stable():
    a, b = builtin_items(per_kind=10), builtin_items(per_kind=10)
    assert a == b and {i.subject for i in a} == {"poem_continue", "poem_author", "quote_author"}
    for it in a:
        assert len(set(it.choices)) == 4 and 0 <= it.answer < 4
    assert any("作者" in i.question for i in a) and any(i.question.endswith("--") for i in a)


def test_text_metrics_equal_hand_computed_values():
    import math

    # ROUGE-L on lower-cased words without punctuation: LCS(the cat sat on the mat, the cat is on the mat) = 5 of 6
    # on both sides → P = R = F = 5/6
    pred, ref = "The cat sat on the mat.", "the cat is on the mat"
    assert rouge_l(pred, ref) == pytest.approx(5 / 6)
    # Chinese by character: LCS("床前明月光", "床前明月") = 4 → P = 1, R = 4/5, F = 8/9 (the library's default sees nothing)
    assert rouge_l("床前明月", "床前明月光") == pytest.approx(8 / 9)
    # BLEU, no smoothing needed: "the cat sat on the mat" against "the cat sat on the red mat": n-gram precisions
    # 6/6, 4/5, 3/4, 2/3, brevity penalty exp(1 - 7/6) (6 words against 7) → 100 · BP · (0.4)^(1/4) = 67.32
    want = 100 * math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on the red mat"]) == pytest.approx(want)
    # Chinese by character (12 tokens each, one different: 是/似): precisions 11/12, 9/11, 7/10, 5/9, no penalty
    zh_pred, zh_ref = "床前明月光，疑是地上霜。", "床前明月光，疑似地上霜。"
    assert bleu([zh_pred], [zh_ref]) == pytest.approx(100 * (11 / 12 * 9 / 11 * 7 / 10 * 5 / 9) ** 0.25)
    assert token_f1("疑是地上霜", "疑似地上霜") == pytest.approx(0.8)  # 4 of 5 characters on both sides
    assert token_f1("the the cat", "the cat") == pytest.approx(0.8)  # P = 2/3, R = 1
    assert exact_match(" Paris. ", "paris") == 1.0 and exact_match("巴黎。", "巴黎") == 1.0 and exact_match("Par", "Paris") == 0.0
    s = generation_scores([pred, zh_pred], [ref, zh_ref])
    assert s["rougeL"] == pytest.approx((rouge_l(pred, ref) + rouge_l(zh_pred, zh_ref)) / 2) and s["n"] == 2


def test_eval_command_end_to_end(tmp_path, tok, capsys):
    tok.save(tmp_path / "tok")
    cfg = load_config("debug", ["model.init_std=0.1", f"train.val_data={tmp_path / 'val'}", "train.seq_len=32"])
    save_run(tmp_path / "run", random_model(), cfg, tmp_path / "tok")
    ids = np.array(tok.encode(TEXT * 8))
    with ShardWriter(tmp_path / "val", "pretrain", 512, 10_000) as w:
        w.add(ids, np.array([len(ids)]))
        w.finish({"counts": {}})
    (tmp_path / "gen.jsonl").write_text(json.dumps({"prompt": "Say hi", "reference": "hi"}) + "\n"
                                        + json.dumps({"prompt": [{"role": "user", "content": "月"}], "answer": "明月"}) + "\n")
    argv = ["eval", str(tmp_path / "run"), "--tasks", "ppl,mc,gen", "--limit", "4", "--gen", str(tmp_path / "gen.jsonl"),
            "--max-new-tokens", "4", "--out", str(tmp_path / "e.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "val bits per byte" in out and "multiple choice acc" in out and "ROUGE-L" in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["ppl"]["tokens"] > 0 and res["mc"]["n"] == 12 and res["gen"]["n"] == 2  # --limit is per subject
    assert main(["eval", str(tmp_path / "run"), "--tasks", "ppl,accuracy"]) == 1
    assert "unknown task(s) accuracy" in capsys.readouterr().err
    with pytest.raises(ValueError, match="choose from ppl, bpb"):
        parse_tasks("")


def test_fewshot_context_and_scoring(tok):
    from scratchlm.eval.multiple_choice import choice_logprobs, context_of, fewshot_for

    items = [McItem("2+2=", ["4", "5"], 0, "math"), McItem("3+3=", ["7", "6"], 1, "math"), McItem("Sky?", ["blue", "red"], 0, "x")]
    assert [s.question for s in fewshot_for(items, 0, 5)] == ["3+3="]  # same subject, never the item itself
    assert context_of(items[0], fewshot_for(items, 0, 1)) == "3+3= 6\n\n2+2="
    dev = [McItem("1+1=", ["2", "3"], 0)]
    assert context_of(items[2], fewshot_for(items, 2, 1, pool=dev)) == "1+1= 2\n\nSky?"
    model = random_model()
    out = score_mc(model, tok, items, fewshot=1, pool=dev)
    by_hand = choice_logprobs(model, [encode_pair(tok, "1+1= 2\n\n2+2=", " 4"), encode_pair(tok, "1+1= 2\n\n2+2=", " 5")])
    assert out["loglikelihoods"][0] == pytest.approx(by_hand, abs=1e-5)


def test_letters_style_and_gen_fewshot_turns(tok, tmp_path):
    from scratchlm.eval.evaluate import with_shots
    from scratchlm.eval.multiple_choice import as_letters

    it = as_letters(McItem("Which is a colour? ", ["cat", "blue", "ten"], 1, "x"))
    assert (it.question, it.choices, it.answer, it.delimiter) == ("Which is a colour?\nA. cat\nB. blue\nC. ten\nAnswer:", ["A", "B", "C"], 1, " ")
    items = [{"messages": [{"role": "user", "content": q}], "reference": r, "task": t}
             for q, r, t in (("1+1?", "2", "add"), ("hi", "hello", "chat"), ("2+2?", "4", "add"))]
    shot = with_shots(items[0], items, 0, 1)
    assert [m["content"] for m in shot["messages"]] == ["2+2?", "4", "1+1?"]  # same task first
    assert [m["role"] for m in shot["messages"]] == ["user", "assistant", "user"] and with_shots(items[0], items, 0, 0) is items[0]


def test_eval_library_modules_import_no_cli_module():
    # eval/cli.py holds only the arguments; the library (evaluate_run, winrate, the report card) never imports it
    import ast
    from pathlib import Path

    import scratchlm.eval

    for path in Path(scratchlm.eval.__file__).parent.glob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.endswith(".cli") or m == "argparse"}, path.name


def test_train_until_accuracy_stops_at_the_first_check_that_reaches_the_target(tmp_path):
    from safetensors.torch import save_file

    from scratchlm.eval.train_until import train_until_accuracy

    model = torch.nn.Linear(1, 1, bias=False)
    trained = []

    def train_to(step):  # a "checkpoint" whose weight is step / 10, so the score climbs with the steps
        d = tmp_path / "checkpoints" / f"step-{step}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "trainer.json").write_text("{}")
        save_file({"weight": torch.full((1, 1), step / 10)}, str(d / "model.safetensors"))
        trained.append(step)

    score = lambda m: round(m.weight.item(), 3)  # noqa: E731
    step, dev = train_until_accuracy(model, tmp_path, train_to, score, every=2, max_steps=9, target=0.55)
    assert (step, dev, trained) == (6, [[2, 0.2], [4, 0.4], [6, 0.6]], [2, 4, 6]) and score(model) == 0.6
    # a rerun checks the checkpoint it stopped at first; the last part stops at max_steps
    trained.clear()
    step, dev = train_until_accuracy(model, tmp_path, train_to, score, every=2, max_steps=9, target=2.0)
    assert (step, [s for s, _ in dev], trained) == (9, [6, 8, 9], [6, 8, 9])
