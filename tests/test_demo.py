"""`scratchlm demo --quick`: the whole pipeline end to end, through the CLI."""

import json

import pytest

from scratchlm.cli import main
from scratchlm.demo.pipeline import DEMO_CHATS


@pytest.mark.slow
@pytest.mark.ci
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    after_sft = ["lora", "reward", "dpo", "grpo", "ppo", "distill", "rag", "tools"]
    results = tmp_path / "results" / "demo.json"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--stages", "all", "--results", str(results)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    from scratchlm.results import read_results

    doc = read_results(results)  # the summary with its provenance, what the README's tables are rendered from
    assert doc["numbers"] == summary and doc["seed"] == 0 and doc["split"] == "test" and doc["name"] == "demo"
    assert summary["settings"]["eval_split"] == "test" and doc["machine"]["cores"] >= 1
    assert set(summary["accuracy"]) == {"add2", "add2 (unseen phrasings)", "next_line", "author", "identity"}
    # open-ended corpus chats are answered in the sample chats, not scored
    open_samples = [g for g in summary["samples"] if g["task"] in ("fortune", "recite", "continue")]
    assert {g["task"] for g in open_samples} == {"fortune", "recite", "continue"}
    assert all(g["ok"] is None for g in open_samples)
    assert [c["prompt"] for c in summary["chats"]] == DEMO_CHATS and all(isinstance(c["reply"], str) for c in summary["chats"])
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    # a conversation: each checkable task asked alone, as a chat's third turn and with thinking off (4 each), and the
    # open-ended requests sampled with the chat defaults, thinking on and off, measured for stutter and identity line
    conv = summary["conversation"]
    assert set(conv["alone"]) == set(conv["third_turn"]) == set(conv["think_off"]) == {"add2", "next_line", "author",
                                                                                      "identity"}
    assert all(conv[m][t][1] == 4 for m in ("alone", "third_turn", "think_off") for t in conv[m])
    assert len(conv["samples"][0]["chat"]) == 5
    oe = summary["open_ended"]
    assert set(oe) == {"thinking on", "thinking off"} and oe["thinking off"]["thinking"] is False
    from scratchlm.eval.stutter import open_ended_prompts

    n_open = len(open_ended_prompts(out / "data" / "synth" / "prompt_test.jsonl"))  # the distinct test requests
    assert all(r["replies"] == n_open >= 10 and r["sampling"]["temperature"] == 0.7 and r["sampling"]["seed"] == 0
               for r in oe.values())
    # even a 30-step model must beat the unigram model on held-out text
    assert summary["val_ppl_pretrain"] < summary["val_ppl_unigram"]
    # The quick run's accuracies are all 0 (too few steps), so they cannot tell a pipeline that learns from one
    # that does not: the losses can. Pretraining's held-out loss falls at every check and ends well below the
    # uniform guess; SFT's held-out chat loss falls at every check and ends well below the pretrained model's own
    # loss on the first chat batch (SFT's step 1). Measured (2 threads): pretrain 6.42 -> 6.01 (uniform 6.93),
    # SFT 6.65 (step 1) -> val 6.04 -> 5.20.
    import math

    def losses(stage):
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]

    _, pre_val = losses("pretrain")
    sft_train, sft_val = losses("sft")
    assert len(pre_val) >= 2 and all(b < a for a, b in zip(pre_val, pre_val[1:]))
    assert pre_val[-1] < math.log(summary["settings"]["vocab_size"]) - 0.5
    assert len(sft_val) >= 2 and all(b < a for a, b in zip(sft_val, sft_val[1:]))
    assert sft_val[-1] < sft_train[0] - 0.5
    for stage in ("pretrain", "sft"):
        for name in ("model.safetensors", "config.toml", "tokenizer.json", "metrics.jsonl", "loss.png"):
            assert (out / stage / name).exists(), f"{stage}/{name}"
    assert summary["settings"]["sft_schedule"] == "wsd"
    # the LoRA stage: an adapter run over the SFT run, its numbers in the summary
    lo = summary["lora"]
    assert lo["name"] == "Nova" and all(0.0 <= lo[k] <= 1.0 for k in lo if k != "name")
    assert (out / "lora" / "adapter_model.safetensors").exists() and not (out / "lora" / "model.safetensors").exists()
    # reward and DPO stages: a reward run folder and a DPO run, held-out numbers before and after in the summary
    from scratchlm.runs import load_run
    from scratchlm.model.reward import RewardModel

    rw, dpo = summary["reward"], summary["dpo"]
    assert rw["pairs"] == 26 and all(0.0 <= rw[k] <= 1.0 for k in ("accuracy_before", "accuracy_after"))
    assert isinstance(load_run(out / "reward")[0], RewardModel)
    assert set(dpo["tasks"]) == {"add2", "add2 (unseen phrasings)", "identity"}
    assert dpo["tasks"]["add2"][0] == summary["accuracy"]["add2"]  # "before" is the SFT model's own score
    assert dpo["implicit_margin"] != 0.0 and 0.0 <= dpo["logp_accuracy_after"] <= 1.0
    # DPO learnt its pairs: on its own val pairs (phrasings closer to training than the test split's new ones) the
    # implicit reward prefers the chosen reply (0.75 measured), while on the 26 test pairs it is at chance
    # The reward model's 26 held-out pairs are too few for ten steps to move reliably (0.58 -> 0.42 once the quick
    # SFT data changed, 2026-12-07): what the quick run can show is that it learnt its own training pairs (measured:
    # 0.50 -> 0.78 of 90), against the fresh score head the stage compares with
    import torch

    from scratchlm.eval.preference import pair_accuracy
    from scratchlm.shards.datasets import open_shards

    train_pairs = open_shards(out / "data" / "pref")
    sft_model, _, sft_cfg = load_run(out / "sft")
    torch.manual_seed(0)
    fresh = pair_accuracy(RewardModel(sft_model), train_pairs, sft_cfg.train.seq_len, max_pairs=200)
    learnt = pair_accuracy(load_run(out / "reward")[0], train_pairs, sft_cfg.train.seq_len, max_pairs=200)
    assert learnt["accuracy"] >= fresh["accuracy"] + 0.15 and learnt["margin"] > fresh["margin"]
    assert 0.0 <= dpo["implicit_accuracy"] <= 1.0  # 26 test pairs: chance either side of 0.5 at this size
    dpo_val = [r for r in map(json.loads, (out / "dpo" / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert dpo_val[-1]["val_accuracy"] > 0.5 and dpo_val[-1]["val_margin"] > 0
    # GRPO: a cold start (SFT until some add3 dev prompts are right, checked every grpo_cold_every steps), then an RL
    # run from it on add3 prompts (a task the main SFT never saw, with its own held-out prompts); "before" of the
    # cold start is the SFT model's own score, "before" of GRPO the cold start's
    g = summary["grpo"]
    keys = {"add3", "add3 (unseen phrasings)", "add2", "add2 (unseen phrasings)"}
    assert set(g["tasks"]) == set(g["cold_start"]) == keys and g["task"] == "add3"
    assert all(0.0 <= a <= 1.0 for part in ("tasks", "cold_start") for pair in g[part].values() for a in pair)
    assert all(g["cold_start"][k][0] == summary["accuracy"][k] for k in ("add2", "add2 (unseen phrasings)"))
    assert all(g["tasks"][k][0] == g["cold_start"][k][1] for k in keys)
    checked = [step for step, _ in g["cold_start_dev"]]
    assert checked == list(range(2, g["cold_start_steps"] + 1, 2)) and g["cold_start_steps"] <= 4
    assert all(acc < 0.4 for _, acc in g["cold_start_dev"][:-1])  # it stops at the first check that reaches the target
    assert load_run(out / "grpo_cold")[2].train.objective == "sft"
    assert len(g["reward_log"]) == 2 and load_run(out / "grpo")[2].train.objective == "grpo"
    assert load_run(out / "grpo")[2].train.init_from == str(out / "grpo_cold")
    # PPO with the reward stage's model: held-out mean reward and task accuracy before and after
    pp = summary["ppo"]
    assert pp["prompts"] > 0 and len(pp["reward"]) == 2 and set(pp["reward_tasks"]) >= {"add2", "identity"}
    # a few quick steps move the mean sampled score by less than its noise (-1.20 -> -1.17, then -2.10 -> -2.14 after
    # the SFT data changed): here only that PPO trained the policy; test_ppo.py checks that it learns
    assert all(math.isfinite(r) for r in pp["reward"])
    # the quick settings chain PPO after DPO (ppo_init = "dpo"): the demo ends in one model, SFT → DPO → PPO, scored on
    # every task against SFT, named in the summary
    ppo_model, dpo_model = load_run(out / "ppo")[0], load_run(out / "dpo")[0]
    assert any(not torch.equal(a, b) for a, b in zip(ppo_model.state_dict().values(), dpo_model.state_dict().values()))
    assert pp["chain"] == ["sft", "dpo", "ppo"] and load_run(out / "ppo")[2].train.init_from == str(out / "dpo")
    assert summary["final_model"] == {"run": str(out / "ppo"), "chain": ["sft", "dpo", "ppo"]}
    assert set(pp["tasks"]) == set(summary["accuracy"])
    assert all(pp["tasks"][k][0] == summary["accuracy"][k] for k in pp["tasks"])  # "before" is the SFT model
    assert load_run(out / "ppo")[2].train.objective == "ppo" and (out / "ppo" / "critic" / "config.toml").exists()
    # distillation: two students of one (smaller) size, with and without the teacher, same steps
    d = summary["distill"]
    assert d["params"]["distill"] == d["params"]["baseline"] < d["params"]["teacher"]
    assert set(d["val_ppl"]) == {"teacher", "distill", "baseline"} and all(v > 1 for v in d["val_ppl"].values())
    # the teacher's soft targets help the student (measured: teacher 181, distilled 705, baseline 752)
    assert d["val_ppl"]["teacher"] < d["val_ppl"]["distill"] < d["val_ppl"]["baseline"]
    assert load_run(out / "distill")[2].train.objective == "distill"
    assert load_run(out / "distill_baseline")[2].train.max_steps == load_run(out / "distill")[2].train.max_steps
    # the tools step: tool-use SFT from the SFT run on its own chats (rows long enough for one, the model's RoPE
    # tables twice that), the agent with the calculator vs the same model alone, add2/identity before (SFT) → after
    tu = summary["tools"]
    assert tu["n"] == 4 and tu["tools"] == ["calculator"] and tu["split"] == "test"
    assert all(0.0 <= tu[k]["all"] <= 1.0 for k in ("agent", "direct", "called_calculator"))
    assert set(tu["tasks"]) == {"add2", "add2 (unseen phrasings)", "identity"}
    assert all(tu["tasks"][k][0] == summary["accuracy"][k] for k in tu["tasks"])
    tools_cfg = load_run(out / "tools")[2]
    assert tools_cfg.train.objective == "sft" and tools_cfg.train.init_from == str(out / "sft")
    assert tools_cfg.train.seq_len == 1024 and tools_cfg.model.max_seq_len == 2048
    meta = json.loads((out / "data" / "tools_stage" / "meta.json").read_text())
    assert meta["questions"] == [1, 2]  # several questions per chat, as tools_stage_questions asks
    assert meta["calc_tasks"] == ["add4", "sub4"] and set(meta["counts"]["train"]) <= {"add4", "sub4", "identity",
                                                                                       "next_line", "author"}
    assert tools_cfg.train.data == str(out / "data" / "tools_stage_sft")
    assert tools_cfg.train.val_data == str(out / "data" / "tools_stage_sft_val")
    assert set(summary["seconds"]) >= {"lora", "reward", "dpo", "grpo", "ppo", "distill", "rag", "tools"}
    assert summary["reused"] == []  # every stage trained in this run
    host = summary["host_matmul_gflops"]  # the speed probe the times are read against
    assert set(host) == {"start", "after_eval"} and all(v > 0.1 for v in host.values())
    report = (out / "report.md").read_text()  # the report card covers every trained stage
    assert all(f"{st}" in report for st in ("pretrain", "sft", "lora", "reward", "dpo", "grpo", "ppo", "distill"))
    assert (out / "loss_curves.png").exists()
    # the RAG question: both languages asked, the sources given are chunks of the indexed corpus
    rag = summary["rag"]
    assert [q["question"] for q in rag["questions"]] and len(rag["questions"]) == 2 and rag["chunks"] > 0
    assert all(src.startswith("corpus.jsonl:") for q in rag["questions"] for src in q["sources"])
    sft_cfg = (out / "sft" / "config.toml").read_text()
    assert 'schedule = "wsd"' in sft_cfg
    assert f"pretrain_mix = {summary['settings']['sft_pretrain_mix']}" in sft_cfg and "pretrain_mix_data" in sft_cfg
    # on 2+ CPU threads the reward model, DPO and PPO ran in a second process beside the other stages; one after another
    # (--one-lane, from the same SFT run) every stage gives the same numbers to the last digit
    import shutil

    import torch

    assert summary["lanes"] == ([["lora", "grpo", "rag", "tools"], ["reward", "dpo", "ppo", "distill"]]
                                if torch.get_num_threads() >= 2 else [after_sft])
    one = tmp_path / "one_lane"
    for part in ("pretrain", "sft", "tokenizer", "data"):
        shutil.copytree(out / part, one / part)
    assert main(["demo", "--quick", "--out", str(one), "--no-progress", "--stages", "all", "--one-lane"]) == 0
    again = json.loads((one / "summary.json").read_text())
    assert again["lanes"] == [after_sft]
    assert again["reused"] == ["pretrain", "sft"]  # copied in: evaluated, not trained
    assert {st: again[st] for st in after_sft} == {st: summary[st] for st in after_sft}


def test_chat_pieces_are_what_the_template_encodes_between_control_tokens(tmp_path):
    from scratchlm.demo.data import write_chat_pieces

    chats = tmp_path / "sft_train.jsonl"
    chats.write_text(json.dumps({"conversations": [
        {"role": "user", "content": "12+34等于多少？"},
        {"role": "assistant", "content": "<think>2+4=6 1+3=4</think>46"}]}, ensure_ascii=False) + "\n")
    out = tmp_path / "text.jsonl"
    write_chat_pieces(out, chats)
    texts = [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]
    # "role\ncontent" pieces, split at tag tokens (encode_chat encodes the tags as their own ids)
    assert texts == ["user\n12+34等于多少？", "assistant\n", "2+4=6 1+3=4", "46"]


def test_demo_flags_set_steps_and_seed_and_reject_bad_counts():
    from scratchlm.cli import build_parser
    from scratchlm.demo.cli import settings_from_args
    from scratchlm.demo.settings import DemoSettings

    parse = build_parser().parse_args
    default = settings_from_args(parse(["demo"]))
    assert (default.pretrain_steps, default.sft_steps, default.seed) == (
        DemoSettings.pretrain_steps, DemoSettings.sft_steps, 0)
    s = settings_from_args(parse(["demo", "--sft-steps", "600", "--pretrain-steps", "350", "--seed", "3"]))
    assert (s.pretrain_steps, s.sft_steps, s.seed, s.preset) == (350, 600, 3, "tiny")
    quick = settings_from_args(parse(["demo", "--quick", "--sft-steps", "5"]))
    assert (quick.preset, quick.sft_steps) == ("debug", 5)
    with pytest.raises(SystemExit, match="--sft-steps must be at least 1, got 0"):
        settings_from_args(parse(["demo", "--sft-steps", "0"]))


def test_demo_setting_flag_overrides_typed_values_and_names_bad_ones():
    from scratchlm.cli import build_parser
    from scratchlm.demo.cli import settings_from_args

    parse = build_parser().parse_args
    s = settings_from_args(parse(["demo", "--setting", "sft_mixed_turns=0.3", "--setting", "sft_think_off=1",
                                  "--setting", 'train=["train.optimizer=muon"]', "--setting",
                                  "synth_sizes={ add2 = [10, 2, 3] }"]))
    assert (s.sft_mixed_turns, s.sft_think_off, s.train) == (0.3, 1.0, ["train.optimizer=muon"])
    assert s.synth_sizes == {"add2": (10, 2, 3)}  # tuples, as the settings file gives them
    with pytest.raises(SystemExit, match=r"--setting 'sft_turns=1': expected KEY=VALUE with KEY one of .*sft_mixed_turns"):
        settings_from_args(parse(["demo", "--setting", "sft_turns=1"]))
    with pytest.raises(SystemExit, match=r"--setting sft_steps: expected a int like 750, got 'many'"):
        settings_from_args(parse(["demo", "--setting", 'sft_steps="many"']))
    with pytest.raises(SystemExit, match=r"--setting preset: 'tiny' is not a TOML value"):
        settings_from_args(parse(["demo", "--setting", "preset=tiny"]))


def test_demo_mixed_turns_and_think_off_reach_the_sft_data(tmp_path):
    import json

    from scratchlm.demo.data import prepare_demo_data
    from scratchlm.demo.settings import quick_settings

    s = quick_settings()
    s.sft_mixed_turns, s.sft_think_off = 1.0, 1.0
    s.sft_conversations_by_task = {"identity": 0.0}
    paths = prepare_demo_data(tmp_path, s)
    meta = json.loads((tmp_path / "data" / "synth" / "meta.json").read_text(encoding="utf-8"))
    assert (meta["conversations"]["mixed_turns_prob"], meta["conversations"]["think_off_prob"]) == (1.0, 1.0)
    assert meta["conversations"]["by_task"] == {"identity": 0.0}
    lines = (tmp_path / "data" / "synth" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()
    chats = [json.loads(x) for x in lines]
    assert sum(sum(m["role"] == "user" for m in c["conversations"]) >= 2 for c in chats) > len(chats) // 2
    assert all(c["thinking"] == "off" for c in chats if c["task"] == "add2")
    assert not any(c.get("thinking") or c.get("turns") for c in chats if c["task"] == "identity")  # its own share: 0
    assert paths["sft"].exists()


def test_demo_train_list_reaches_pretrain_and_sft_but_not_the_later_stages():
    from scratchlm.config import load_config
    from scratchlm.demo.settings import DemoSettings, post_sft_sets, stage_sets

    s = DemoSettings(train=["train.optimizer=muon", "train.compile=true"])
    for stage in ("pretrain", "sft"):
        t = load_config(s.preset, stage_sets(s, stage)).train
        assert (t.optimizer, t.compile) == ("muon", True)
    later = load_config(s.preset, post_sft_sets(s, 10, [])).train
    assert (later.optimizer, later.compile) == ("adamw", False)


def test_demo_per_stage_train_lists_reach_only_their_stage():
    from scratchlm.config import load_config
    from scratchlm.demo.settings import DemoSettings, stage_sets

    s = DemoSettings(train=["train.compile=true"], pretrain_train=["train.optimizer=muon"],
                     sft_train=["train.muon_lr=0.01"])
    pre, sft = (load_config(s.preset, stage_sets(s, st)).train for st in ("pretrain", "sft"))
    assert (pre.optimizer, pre.compile, pre.muon_lr) == ("muon", True, 0.02)
    assert (sft.optimizer, sft.compile, sft.muon_lr) == ("adamw", True, 0.01)
    # the stage's own list comes after `train`, so it wins
    s = DemoSettings(train=["train.optimizer=muon"], sft_train=["train.optimizer=adamw"])
    assert load_config(s.preset, stage_sets(s, "sft")).train.optimizer == "adamw"
    assert load_config(s.preset, stage_sets(s, "pretrain")).train.optimizer == "muon"


def test_demo_refuses_a_stage_folder_started_with_another_step_count(tmp_path):
    from scratchlm.demo.pipeline import run_demo
    from scratchlm.demo.settings import quick_settings

    out = tmp_path / "demo"
    (out / "pretrain").mkdir(parents=True)
    cfg = out / "pretrain" / "config.toml"
    cfg.write_text("[train]\nmax_steps = 400\n")
    s = quick_settings()
    with pytest.raises(SystemExit, match=r"max_steps = 400, but this demo asks for 60 \(--pretrain-steps\)"):
        run_demo(out, settings=s, progress=False)
    assert cfg.read_text() == "[train]\nmax_steps = 400\n"  # nothing of the earlier run was touched
    assert not (out / "pretrain" / "checkpoints").exists()


def test_stage_settings_reach_the_training_config():
    from scratchlm.config import load_config
    from scratchlm.demo.settings import DemoSettings, stage_sets

    s = DemoSettings(sft_steps=40, sft_decay_frac=0.35, sft_schedule="wsd", pretrain_steps=30, seed=7,
                     sft_pretrain_mix=0.3)
    sft = load_config(s.preset, stage_sets(s, "sft")).train
    assert (sft.max_steps, sft.wsd_decay_frac, sft.schedule, sft.packing, sft.seed) == (40, 0.35, "wsd", True, 7)
    assert sft.pretrain_mix == 0.3
    assert (sft.batch_size, sft.seq_len, sft.lr, sft.warmup_steps) == (s.sft_batch, s.sft_seq_len, s.sft_lr, 2)
    pre = load_config(s.preset, stage_sets(s, "pretrain")).train
    assert (pre.max_steps, pre.doc_mask, pre.lr, pre.seed) == (30, False, s.pretrain_lr, 7)
    with pytest.raises(ValueError, match="stage must be 'pretrain' or 'sft', got 'dpo'"):
        stage_sets(s, "dpo")


def test_stage_lanes():
    import torch

    from scratchlm.demo.pipeline import stage_lanes
    from scratchlm.demo.settings import DemoSettings
    from scratchlm.device import pick_device

    two = torch.get_num_threads() >= 2 and pick_device().type == "cpu"
    s = DemoSettings(stages=["pretrain", "sft", "lora", "reward", "dpo", "ppo"])
    assert stage_lanes(s) == ([["lora"], ["reward", "dpo", "ppo"]] if two else [["lora", "reward", "dpo", "ppo"]])
    s.lanes = 1
    assert stage_lanes(s) == [["lora", "reward", "dpo", "ppo"]]
    # a lane of its own only when both lanes have work
    assert stage_lanes(DemoSettings(stages=["pretrain", "sft", "reward", "dpo", "ppo"])) == [["reward", "dpo", "ppo"]]
    assert stage_lanes(DemoSettings(stages=["pretrain", "sft", "grpo"])) == [["grpo"]]
    assert stage_lanes(DemoSettings()) == []
    # the second lane is a setting: GRPO beside the reward model, DPO and PPO
    s = DemoSettings(stages=["pretrain", "sft", "lora", "reward", "dpo", "grpo", "ppo"],
                     second_lane=["reward", "dpo", "grpo", "ppo"])
    assert stage_lanes(s) == ([["lora"], ["reward", "dpo", "grpo", "ppo"]] if two
                              else [["lora", "reward", "dpo", "grpo", "ppo"]])


def test_second_lane_keeps_ppo_beside_the_models_it_needs():
    from scratchlm.demo.pipeline import check_lanes
    from scratchlm.demo.settings import DEMO_STEPS, DemoSettings

    every = list(DEMO_STEPS)
    check_lanes(DemoSettings(stages=every))  # the default
    check_lanes(DemoSettings(stages=every, second_lane=["lora", "distill"]))  # ppo and reward both in the first
    with pytest.raises(SystemExit, match=r"second_lane must hold ppo and reward together or neither"):
        check_lanes(DemoSettings(stages=every, second_lane=["ppo"]))
    with pytest.raises(SystemExit, match=r"second_lane must hold ppo and reward, dpo together"):
        check_lanes(DemoSettings(stages=every, second_lane=["reward", "ppo"], ppo_init="dpo"))
    check_lanes(DemoSettings(stages=every, second_lane=["reward", "ppo"]))  # ppo starts from SFT: dpo may go apart
    check_lanes(DemoSettings(stages=["pretrain", "sft", "grpo"], second_lane=["ppo"]))  # no ppo: nothing to keep
    with pytest.raises(SystemExit, match=r'ppo_init must be "sft" or "dpo"'):  # the demo's check before training
        check_lanes(DemoSettings(stages=every, ppo_init="grpo"))
    with pytest.raises(SystemExit, match=r"second_lane names pretrain, chat; choose from lora, reward"):
        check_lanes(DemoSettings(stages=every, second_lane=["pretrain", "chat"]))


def test_a_stage_that_fails_in_the_second_lane_is_reported_with_its_traceback(tmp_path, monkeypatch):
    import scratchlm.demo.pipeline as demo
    from scratchlm.demo.settings import quick_settings

    monkeypatch.setitem(demo.AFTER_SFT, "lora", lambda *args: {"name": "Nova"})  # the first lane, in this process
    with pytest.raises(SystemExit, match=r"a stage of reward failed in the second process:\n(.|\n)*Traceback"):
        demo.run_lanes([["lora"], ["reward"]], tmp_path, quick_settings(), {"tokenizer": tmp_path}, {}, False)


def test_demo_stages_flag():
    from scratchlm.demo.settings import DEMO_STEPS, parse_stages

    assert parse_stages("all") == list(DEMO_STEPS) and parse_stages("pretrain, sft") == ["pretrain", "sft"]
    with pytest.raises(SystemExit, match="unknown stage"):
        parse_stages("pretrain,sft,sft2")
    with pytest.raises(SystemExit, match="start with pretrain,sft"):
        parse_stages("sft,lora")
    with pytest.raises(SystemExit, match="ppo learns from the reward stage's model"):
        parse_stages("pretrain,sft,ppo")


def test_settings_come_from_the_settings_file(tmp_path):
    import dataclasses

    from scratchlm.config import read_toml
    from scratchlm.demo.settings import SETTINGS_FILE, DemoSettings, _read_section, quick_settings

    data = read_toml(SETTINGS_FILE)
    fields = [f.name for f in dataclasses.fields(DemoSettings)]
    assert sorted(data["demo"]) == sorted(fields) and set(data["quick"]) < set(fields)
    s, q = DemoSettings(), quick_settings()
    assert s.sft_steps == data["demo"]["sft_steps"] and q.sft_steps == data["quick"]["sft_steps"]
    assert q.sft_lr == s.sft_lr  # what [quick] leaves out keeps the default
    assert s.synth_sizes["add2"] == tuple(data["demo"]["synth_sizes"]["add2"]) and isinstance(s.ppo_tasks, tuple)
    assert list(s.synth_sizes) == list(data["demo"]["synth_sizes"])  # the file's order: build_synth draws in it
    s.stages.append("lora")
    assert DemoSettings().stages == ["pretrain", "sft"]  # each instance its own lists
    bad = tmp_path / "settings.toml"
    bad.write_text("[quick]\nsft_stepz = 3\n")
    with pytest.raises(ValueError, match="unknown setting"):
        _read_section(DemoSettings, "quick", bad)


def test_demo_steps_are_registered_stages_in_registry_order():
    from scratchlm.demo.pipeline import AFTER_SFT, BASE_STEPS
    from scratchlm.demo.settings import DEMO_STEPS
    from scratchlm.stages import STAGE_NAMES

    # the demo's steps are not a second stage registry: the training stages among them are the registry's, in its
    # order; lora and tools (trained by the sft objective) and rag (no training) are the demo's own
    trained = [st for st in DEMO_STEPS if st not in ("lora", "rag", "tools")]
    assert trained == [st for st in STAGE_NAMES if st in trained]
    assert list(BASE_STEPS) + list(AFTER_SFT) == list(DEMO_STEPS)


def test_lanes_run_every_job_once_and_time_it():
    from scratchlm.lanes import run_lanes

    # `max` pickles, so it can run in the spawned second lane: run(job, progress) = max(job, False) = job
    done = run_lanes([[3, 1], [2]], max, False, seed=0)
    assert {job: result for job, (result, _) in done.items()} == {3: 3, 1: 1, 2: 2}
    assert list(done)[:2] == [3, 1] and all(seconds >= 0 for _, seconds in done.values())
    assert run_lanes([], max, False) == {}


def test_lanes_on_one_thread_give_each_lane_one_thread():
    import torch

    from scratchlm.lanes import run_lanes

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # n // 2 would be a zero-thread second lane
    try:
        done = run_lanes([[3], [2]], max, False, seed=0)
    finally:
        torch.set_num_threads(before)
    assert {job: result for job, (result, _) in done.items()} == {3: 3, 2: 2}


def test_ppo_chain_starts_from_dpo_when_asked_and_dpo_runs():
    from scratchlm.demo.ppo import ppo_chain
    from scratchlm.demo.settings import DemoSettings
    from scratchlm.eval.summary import summary_rows

    all_stages = ["pretrain", "sft", "reward", "dpo", "ppo"]
    assert ppo_chain(DemoSettings(stages=all_stages, ppo_init="dpo")) == ["sft", "dpo", "ppo"]
    assert ppo_chain(DemoSettings(stages=all_stages, ppo_init="sft")) == ["sft", "ppo"]
    # without DPO among the stages PPO starts from SFT (the stage says so when it runs)
    assert ppo_chain(DemoSettings(stages=["pretrain", "sft", "reward", "ppo"], ppo_init="dpo")) == ["sft", "ppo"]
    with pytest.raises(SystemExit, match=r'ppo_init must be "sft" or "dpo", got \'grpo\''):
        ppo_chain(DemoSettings(stages=all_stages, ppo_init="grpo"))
    pp = {"chain": ["sft", "dpo", "ppo"], "prompts": 10, "samples": 2, "reward": [0.5, 1.0], "reward_greedy": [1.0, 1.5],
          "tasks": {"add2": [1.0, 0.98]}}
    rows = dict(summary_rows({"settings": {"eval_split": "test"}, "ppo": pp}))
    assert rows["PPO: test mean reward (10 prompts × 2 samples), DPO → PPO"] == "0.50 → 1.00"
    assert rows["final model = PPO (SFT → DPO → PPO): test add2 before → after"] == "1.000 → 0.980"
