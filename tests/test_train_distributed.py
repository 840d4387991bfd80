"""torchrun: 2-process gloo DDP and FSDP2 match one process with the same global batch (with AdamW and with Muon); their
checkpoints load on one process and resume there. DPO and GRPO under DDP match one process too; the rollout
stages refuse FSDP up front."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchlm.runs import load_run
from scratchlm.train.checkpoint import latest_checkpoint, load_checkpoint
from scratchlm.train.stage import train_stage

pytestmark = pytest.mark.slow  # each torchrun start costs seconds; the tests marked ci run in CI (the README claims them)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scratchlm.shards.prepare import prepare
    from scratchlm.tokenizer.bpe import train_tokenizer

    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept"]
    text = d / "text.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(words, size=30)) for _ in range(300)))
    tok = train_tokenizer(d / "tok", vocab_size=300, inputs=[text], show_progress=False)
    prepare("pretrain", tok, [text], d / "shards", val_frac=0.1, dedup=False)
    return d / "shards"


def _sets(batch_size, *extra):
    return ["model.vocab_size=300", "train.max_steps=4", "train.seq_len=32", f"train.batch_size={batch_size}",
            "train.log_every=1", "train.save_every=2", "train.eval_every=0", "train.warmup_steps=1", *extra]


def _torchrun(data, out, *sets, stop_at=None, init_from=None, stage="pretrain", expect_ok=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scratchlm.cli", "train", stage, "--config", "debug", "--data", str(data),
           "--out", str(out), "--no-progress"]
    if init_from:
        cmd += ["--init-from", str(init_from)]
    for s in sets:
        cmd += ["--set", s]
    if stop_at:
        cmd += ["--stop-at-step", str(stop_at)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _how(parallel):
    """The --set that picks DDP, FSDP2 or DeepSpeed ZeRO-2 (skipped when DeepSpeed is not installed)."""
    if parallel == "zero2":
        pytest.importorskip("deepspeed")
        return "train.deepspeed=configs/deepspeed_zero2.json"
    return f"train.parallel={parallel}"


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.ci
@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "zero2"])
def test_two_processes_match_one_with_same_global_batch(data, tmp_path, parallel):
    one = train_stage("pretrain", tmp_path / "one", "debug", _sets(8), str(data), progress=False)
    _torchrun(data, tmp_path / "two", *_sets(4, _how(parallel)))
    np.testing.assert_allclose(_losses(tmp_path / "two"), one.losses, rtol=0, atol=1e-5)
    # the checkpoint written by 2 processes is a plain full state dict: it loads on this one
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    assert ckpt.step == 4 and ckpt.trainer["world_size"] == 2
    model, _, _ = load_run(tmp_path / "two")
    ref, _, _ = load_run(tmp_path / "one")
    # Weights get 1e-4: Adam divides by √v, which turns a 1e-7 difference in a near-zero gradient into ~2e-5 on
    # one element of 2048 on some CPUs (seen on an AMD EPYC host, at this test's base commit too); the losses
    # above hold to 1e-5.
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4, err_msg=k)


# CI resumes from FSDP (the sharded optimizer state gathered into a plain checkpoint); DDP and ZeRO-2 only locally
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.ci), "zero2"])
def test_resume_on_one_process_from_two(data, tmp_path, parallel):
    full = train_stage("pretrain", tmp_path / "full", "debug", _sets(8), str(data), progress=False)
    _torchrun(data, tmp_path / "run", *_sets(4, _how(parallel)), stop_at=2)
    rest = train_stage("pretrain", tmp_path / "run", "debug", _sets(8), str(data), resume=True, progress=False)
    assert rest.step == 4
    np.testing.assert_allclose(_losses(tmp_path / "run"), full.losses, rtol=0, atol=1e-5)


@pytest.mark.ci
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_muon_two_processes_match_one(data, tmp_path, parallel):
    # DDP: every process orthogonalises the same all-reduced gradient. FSDP2: each process gathers the full matrix
    # (DTensor.full_tensor) for Newton–Schulz and keeps its own rows of the result.
    muon = "train.optimizer=muon"
    one = train_stage("pretrain", tmp_path / "one", "debug", _sets(8, muon), str(data), progress=False)
    _torchrun(data, tmp_path / "two", *_sets(4, _how(parallel), muon))
    # 1e-4, not AdamW's 1e-5: Newton–Schulz runs in bfloat16 (as torch.optim.Muon) and is sensitive to the
    # all-reduce's 1e-7 rounding (see the weights below); measured 3e-5 on the loss. Newton–Schulz on each process's
    # own FSDP shard instead of the gathered matrix moved the loss by 5e-2 (planted once).
    np.testing.assert_allclose(_losses(tmp_path / "two"), one.losses, rtol=0, atol=1e-4)
    model, _, _ = load_run(tmp_path / "two")
    ref, _, _ = load_run(tmp_path / "one")
    # Weights: relative distance. Newton–Schulz lifts every singular direction of the momentum to about 1, and in
    # bfloat16 the weakest directions are mostly rounding noise, so a 1e-7 difference from the all-reduce changes
    # them (measured: 2.5% at most, in attn.wo; a 1e-7 relative perturbation of a matrix moves its bf16 Newton–Schulz
    # output by 1.2%); the strong directions, which carry the loss, agree (the losses above).
    rel = {k: float((a - b).norm() / b.norm()) for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values())}
    assert max(rel.values()) < 0.04, rel


def test_muon_resumes_on_one_process_from_fsdp(data, tmp_path):
    # the sharded momentum buffers are gathered into the plain checkpoint and restored on one process
    muon = "train.optimizer=muon"
    full = train_stage("pretrain", tmp_path / "full", "debug", _sets(8, muon), str(data), progress=False)
    _torchrun(data, tmp_path / "run", *_sets(4, "train.parallel=fsdp", muon), stop_at=2)
    rest = train_stage("pretrain", tmp_path / "run", "debug", _sets(8, muon), str(data), resume=True, progress=False)
    assert rest.step == 4
    # 1e-4 as in the parity test above: the first two steps ran on two processes
    np.testing.assert_allclose(_losses(tmp_path / "run"), full.losses, rtol=0, atol=1e-4)


@pytest.mark.ci
def test_fsdp_saves_a_lora_run_as_its_adapters(data, tmp_path):
    # The final save gathers FSDP's shards into a module shaped as the stage shaped the trained one.
    train_stage("pretrain", tmp_path / "base", "debug", _sets(8), str(data), progress=False)
    one = train_stage("pretrain", tmp_path / "one", "debug", _sets(8, "lora.rank=4"), str(data),
                    init_from=tmp_path / "base", progress=False)
    _torchrun(data, tmp_path / "two", *_sets(4, "train.parallel=fsdp", "lora.rank=4"), init_from=tmp_path / "base")
    assert (tmp_path / "two" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "two" / "model.safetensors").exists()
    np.testing.assert_allclose(_losses(tmp_path / "two"), one.losses, rtol=0, atol=1e-5)
    model, _, _ = load_run(tmp_path / "two")
    ref, _, _ = load_run(tmp_path / "one")
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4, err_msg=k)


@pytest.fixture(scope="module")
def post_setup(data, tmp_path_factory):
    """Preference and prompt shards on the fixture's tokenizer, and a 2-step pretrain run to start DPO / GRPO from
    (init_std=0.2: peaked enough that some samples stop early, so GRPO's length reward varies within a group)."""
    from scratchlm.shards.prepare import prepare

    d = tmp_path_factory.mktemp("post")
    rng = np.random.default_rng(1)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    rows = []
    for _ in range(40):
        q = [{"role": "user", "content": " ".join(rng.choice(words, size=4))}]
        rows.append({"chosen": q + [{"role": "assistant", "content": " ".join(rng.choice(words, size=3))}],
                     "rejected": q + [{"role": "assistant", "content": " ".join(rng.choice(words, size=5))}]})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare("preference", data.parent / "tok", [d / "pairs.jsonl"], d / "pref", dedup=False)
    prompts = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}], "answer": str(2 * i)} for i in range(16)]
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    prepare("prompt", data.parent / "tok", [d / "prompts.jsonl"], d / "prompts", dedup=False)
    base = train_stage("pretrain", d / "base", "debug", _sets(8, "train.max_steps=2", "model.init_std=0.2"), str(data),
                     progress=False)
    return d, base.out_dir


def _same_trained_weights(run, ref, start):
    """run's weights equal ref's (two processes against one), and moved away from `start`."""
    model, _, _ = load_run(run)
    want, _, _ = load_run(ref)
    first, _, _ = load_run(start)
    moved = 0.0
    for (k, a), b, c in zip(model.state_dict().items(), want.state_dict().values(), first.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4, err_msg=k)
        moved = max(moved, float((a - c).abs().max()))
    assert moved > 1e-3  # the steps did train (the ranks agreeing on unchanged weights would prove nothing)


_POST = ["model.vocab_size=300", "train.max_steps=3", "train.seq_len=32", "train.log_every=1", "train.save_every=0",
         "train.eval_every=0", "train.warmup_steps=1", "train.lr=1e-2"]


@pytest.mark.ci
def test_dpo_under_ddp_matches_one_process(post_setup, tmp_path):
    # DPO's log-probs go through the wrapped model's forward (objectives.token_logprobs): DDP has no
    # `token_logprobs` attribute, and a method other than forward would skip its gradient all-reduce.
    d, base = post_setup
    one = train_stage("dpo", tmp_path / "one", "debug", _POST + ["train.batch_size=4"], str(d / "pref"), init_from=base,
                    progress=False)
    _torchrun(d / "pref", tmp_path / "two", *_POST, "train.batch_size=2", "train.parallel=ddp", stage="dpo",
              init_from=base)
    np.testing.assert_allclose(_losses(tmp_path / "two"), one.losses, rtol=0, atol=1e-5)
    _same_trained_weights(tmp_path / "two", tmp_path / "one", base)


GRPO_SETS = ["rl.num_generations=4", "rl.max_new_tokens=16", "rl.temperature=2.0", "rl.reward_funcs=length",
             "rl.reward_weights=1", "rl.loss_agg=grpo"]  # grpo: a mean over sequences, so the same on 1 or 2 processes


@pytest.mark.ci
def test_grpo_under_ddp_matches_one_process(post_setup, tmp_path):
    # Rollouts are seeded by global position: each rank samples what one process samples for those prompts.
    d, base = post_setup
    train_stage("grpo", tmp_path / "one", "debug", _POST + GRPO_SETS + ["train.batch_size=4"], str(d / "prompts"),
              init_from=base, progress=False)
    _torchrun(d / "prompts", tmp_path / "two", *_POST, *GRPO_SETS, "train.batch_size=2", stage="grpo", init_from=base)
    recs = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("reward_std", 0) > 0 for r in recs)  # some group had a signal to learn from
    _same_trained_weights(tmp_path / "two", tmp_path / "one", base)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rollout_stages_refuse_fsdp(post_setup, tmp_path, stage):
    d, base = post_setup
    proc = _torchrun(d / "prompts", tmp_path / "run", *_POST, *GRPO_SETS, "train.parallel=fsdp", stage=stage,
                     init_from=base, expect_ok=False)
    assert proc.returncode != 0
    assert f"train.parallel=fsdp: the {stage} stage samples" in proc.stdout + proc.stderr
    assert "use train.parallel=ddp" in proc.stdout + proc.stderr
