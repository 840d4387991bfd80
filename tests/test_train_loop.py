"""The one training loop: learning, exact resume, NaN stop, accumulation, SFT masks, run folders."""

import json

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model, load_run
from scratchlm.train.checkpoint import list_checkpoints
from scratchlm.train.loop import TrainingDiverged, train
from scratchlm.train.objectives import IGNORE, SFT, Objective, Pretrain

SMALL = ["train.batch_size=2", "train.seq_len=16", "train.log_every=1", "train.eval_every=0",
         "train.save_every=0", "train.warmup_steps=2"]


class ArrayShards:
    """Token shards held in memory, with the same read API as scratchlm.shards.datasets.Shards."""

    def __init__(self, ids, mask=None, doc_starts=(0,), kind="pretrain", vocab_size=512):
        self.ids = np.asarray(ids, dtype=np.uint16)
        self.mask = None if mask is None else np.asarray(mask, dtype=np.uint8)
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)
        self.kind, self.n_tokens = kind, len(self.ids)
        self.meta = {"kind": kind, "vocab_size": vocab_size}

    def read(self, start, length):
        return self.ids[start:start + length]

    def read_mask(self, start, length):
        return None if self.mask is None else self.mask[start:start + length]


def _shards(n=4000, seed=0):
    # a repeating random "text": learnable, so the loss visibly falls
    base = np.random.default_rng(seed).integers(0, 512, size=97)
    return ArrayShards(np.tile(base, n // 97 + 1)[:n])


def _cfg(*extra):
    return load_config("debug", SMALL + list(extra))


def _run(cfg, out, shards=None, **kw):
    shards = shards or _shards()
    return train(cfg, Pretrain(cfg, shards, kw.pop("val", None)), out, build_model(cfg), progress=False, **kw)


class FixedBatch(Objective):
    """Always the same batch: the loss must fall as the model memorises it."""

    def __init__(self, cfg):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.model.vocab_size, (2, 17), generator=g)
        self.batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    def next_batches(self):
        return [self.batch]

    def loss(self, model, batch):
        return model(batch["input_ids"], targets=batch["targets"]).loss, {}


def test_loss_decreases_on_fixed_batch(tmp_path):
    cfg = _cfg("train.max_steps=15", "train.schedule=constant", "train.lr=3e-3")
    res = train(cfg, FixedBatch(cfg), tmp_path / "run", build_model(cfg), progress=False)
    assert res.status == "done" and len(res.losses) == 15
    assert res.losses[-1] < 0.5 * res.losses[0]
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "loss.png").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])  # muon: its momentum buffers and AdamW's state both restored
def test_resume_continues_exactly(tmp_path, optimizer):
    # dropout on, so the restored torch RNG matters too
    cfg = _cfg("train.max_steps=8", "model.dropout=0.1", f"train.optimizer={optimizer}")
    full = _run(cfg, tmp_path / "full")
    first = _run(cfg, tmp_path / "split", stop_at_step=4)
    assert first.status == "stopped" and [s for s, _ in list_checkpoints(tmp_path / "split" / "checkpoints")] == [4]
    # the resumed model starts from different random weights: everything must come from the checkpoint
    other = load_config("debug", SMALL + ["train.max_steps=8", "model.dropout=0.1", "train.seed=99",
                                          f"train.optimizer={optimizer}"])
    second = train(cfg, Pretrain(cfg, _shards()), tmp_path / "split", build_model(other), resume=True, progress=False)
    assert second.status == "done" and second.step == 8
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)
    a, _, _ = load_run(tmp_path / "full")
    b, _, _ = load_run(tmp_path / "split")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no duplicated lines after the resume


class NaNAtStep(Pretrain):
    """Pretrain whose loss turns NaN at one optimizer step (1-based): how the test makes a run diverge."""

    def __init__(self, cfg, shards, at):
        super().__init__(cfg, shards)
        self.at, self.step = at, 0

    def next_batches(self):
        self.step += 1  # the loop asks for one step's batches at a time
        return super().next_batches()

    def loss(self, model, batch):
        loss, m = super().loss(model, batch)
        return (loss * float("nan") if self.step == self.at else loss), m


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = _cfg("train.max_steps=8", "train.save_every=2")
    ref = _run(cfg, tmp_path / "ref", stop_at_step=4)
    assert ref.step == 4
    with pytest.raises(TrainingDiverged, match="step 5.*not finite.*step-4"):
        train(cfg, NaNAtStep(cfg, _shards(), at=5), tmp_path / "run", build_model(cfg), progress=False)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in ckpts] == [2, 4]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # the last good checkpoint is byte-for-byte the one a clean run writes at step 4
    good = (tmp_path / "ref" / "checkpoints" / "step-4" / "model.safetensors").read_bytes()
    assert (ckpts[-1][1] / "model.safetensors").read_bytes() == good


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    big = _run(_cfg("train.max_steps=4", "train.batch_size=4"), tmp_path / "big")
    acc = _run(_cfg("train.max_steps=4", "train.batch_size=2", "train.grad_accum=2"), tmp_path / "acc")
    np.testing.assert_allclose(acc.losses, big.losses, rtol=0, atol=1e-5)


def test_validation_logs_loss_and_ppl(tmp_path):
    cfg = _cfg("train.max_steps=4", "train.eval_every=2", "train.eval_batches=2")
    res = _run(cfg, tmp_path / "run", val=_shards(500, seed=1))
    assert [s for s, _ in res.val] == [2, 4]
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val_loss" in r]
    assert vals and all(abs(r["val_ppl"] - np.exp(r["val_loss"])) < 1e-6 * r["val_ppl"] for r in vals)


def test_every_log_step_records_resident_memory(tmp_path):
    # rss_mb is what bench/bench_rl_memory.py reads to check that memory stays flat; only its presence is tested
    _run(_cfg("train.max_steps=2"), tmp_path / "run")
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["rss_mb"] > 0 for r in recs)


def test_existing_checkpoints_need_resume(tmp_path):
    cfg = _cfg("train.max_steps=2")
    _run(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        _run(cfg, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _run(cfg, tmp_path / "empty", resume=True)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="fewer than train.seq_len"):
        Pretrain(_cfg(), ArrayShards(np.arange(10)))


# -- SFT ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    src = d / "text.txt"
    src.write_text("\n\n".join(f"user asks {i} and the assistant answers {i * 7}" for i in range(300)))
    return Tokenizer.load(train_tokenizer(d / "tok", vocab_size=400, inputs=[src], show_progress=False))


def _sft_shards(tok):
    convs = [[{"role": "user", "content": f"what is {i} + {i}?"},
              {"role": "assistant", "content": f"{2 * i}"}] for i in range(12)]
    convs.append([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                  {"role": "assistant", "content": "see you"}])
    ids, mask, starts = [], [], []
    for c in convs:
        i, m = tok.encode_chat(c)
        starts.append(len(ids))
        ids += i
        mask += m
    return ArrayShards(ids, mask, starts, kind="sft", vocab_size=tok.vocab_size), convs


def test_sft_packed_rows_hold_whole_conversations_with_exact_targets(tok):
    shards, convs = _sft_shards(tok)
    T = 56  # two short conversations fit in a row; the multi-turn one (60 tokens) is truncated
    cfg = load_config("debug", ["train.batch_size=2", f"train.seq_len={T}", "train.packing=true"])
    obj = SFT(cfg, shards)
    encoded = [tuple(part[:T + 1] for part in tok.encode_chat(c)) for c in convs]  # long ones are truncated
    assert len(tok.encode_chat(convs[-1])[0]) > T + 1
    seen = []
    for _ in range(obj.windows.n // 2):
        (batch,) = obj.next_batches()
        for r in range(2):
            x, y, d = batch["input_ids"][r], batch["targets"][r], batch["doc_ids"][r]
            docs = [int(v) for v in dict.fromkeys(d.tolist()) if v >= 0]  # conversations in row order
            assert len(docs) >= 1 and sum(len(encoded[k][0]) for k in docs) <= T + 1
            pos = 0
            for k in docs:
                ids, mask = encoded[k]
                n = len(ids) - (1 if k == docs[-1] else 0)  # the row's last token is a target, not an input
                assert x[pos:pos + n].tolist() == ids[:n] and (d[pos:pos + n] == k).all()
                want = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE]  # never the next doc
                assert y[pos:pos + n].tolist() == want[:n]
                pos += n
            assert (y[pos:] == IGNORE).all() and (d[pos:] == -1).all()  # right padding
            seen += docs
    assert sorted(seen) == sorted(set(seen)) and len(seen) > len(convs) // 2  # each conversation at most once
    assert obj.windows.n < len(convs)  # rows really hold several conversations


def test_packed_rows_are_a_pure_function_of_position(tok):
    shards, convs = _sft_shards(tok)
    cfg = load_config("debug", ["train.batch_size=3", "train.seq_len=56", "train.packing=true"])
    a = SFT(cfg, shards)
    first = [a.next_batches()[0] for _ in range(12)]  # several epochs
    per_epoch = [a.windows._rows(e) for e in range(3)]
    for rows in per_epoch:  # every epoch visits every conversation exactly once
        assert sorted(int(k) for row in rows for k in row) == list(range(len(convs)))
    b = SFT(cfg, shards)
    b.load_state_dict({"position": 3 * 7})  # a resumed run jumps straight to step 8
    for want in first[7:]:
        got = b.next_batches()[0]
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_pretrain_windows_ignore_targets_across_documents():
    ids = np.arange(100) % 500
    shards = ArrayShards(ids, doc_starts=(0, 30, 55))
    cfg = _cfg("train.batch_size=1", "train.seq_len=40")
    obj = Pretrain(cfg, shards)
    obj.windows.shuffle = False
    (batch,) = obj.next_batches()  # stream tokens 0..40: documents 0 (0-29) and 1 (30-54)
    assert batch["doc_ids"][0].tolist() == [0] * 30 + [1] * 10
    y = batch["targets"][0]
    assert y[29] == IGNORE and y[:29].tolist() == list(range(1, 30)) and y[30:].tolist() == list(range(31, 41))
    off = Pretrain(_cfg("train.batch_size=1", "train.seq_len=40", "train.doc_mask=false"), shards)
    off.windows.shuffle = False
    (plain,) = off.next_batches()
    assert "doc_ids" not in plain and plain["targets"][0].tolist() == list(range(1, 41))


def test_sft_padded_rows_are_one_conversation_each(tok):
    shards, convs = _sft_shards(tok)
    cfg = load_config("debug", ["train.batch_size=4", "train.seq_len=64", "train.packing=false"])
    obj = SFT(cfg, shards)
    obj.windows.shuffle = False
    (batch,) = obj.next_batches()
    for r in range(4):
        ids, mask = tok.encode_chat(convs[r])
        got = [t for t in batch["targets"][r].tolist() if t != IGNORE]
        assert got == [t for t, m in zip(ids[1:], mask[1:]) if m]
        assert tok.decode(got) == f"{2 * r}<|im_end|>"  # assistant content and its closing token only
        assert batch["input_ids"][r, : len(ids) - 1].tolist() == ids[:-1]
        assert (batch["targets"][r, len(ids) - 1:] == IGNORE).all()  # right padding is never a target
    # the multi-turn conversation: both assistant turns count, nothing else
    last = len(convs) - 1
    obj.position = last
    (batch,) = obj.next_batches()
    got = [t for t in batch["targets"][0].tolist() if t != IGNORE]
    assert tok.decode(got) == "hello<|im_end|>see you<|im_end|>"


def test_sft_grad_accumulation_weights_micro_batches_by_their_targets(tok, tmp_path):
    # Packed rows hold different numbers of assistant tokens: the step loss must be the mean over all of
    # them, so 2 micro-batches of 2 rows give the same losses as 1 batch of 4.
    shards, _ = _sft_shards(tok)
    sets = ["train.max_steps=3", f"model.vocab_size={tok.vocab_size}", "train.objective=sft", "train.seq_len=56"]
    big_cfg, acc_cfg = _cfg(*sets, "train.batch_size=4"), _cfg(*sets, "train.batch_size=2", "train.grad_accum=2")
    big = train(big_cfg, SFT(big_cfg, shards), tmp_path / "big", build_model(big_cfg), progress=False)
    acc = train(acc_cfg, SFT(acc_cfg, shards), tmp_path / "acc", build_model(acc_cfg), progress=False)
    np.testing.assert_allclose(acc.losses, big.losses, rtol=0, atol=1e-5)


def test_sft_rejects_pretrain_shards():
    with pytest.raises(ConfigError, match="prepare --kind sft"):
        SFT(_cfg(), _shards())


def test_sft_trains_from_a_pretrained_run(tok, tmp_path):
    shards, _ = _sft_shards(tok)
    cfg = _cfg("train.max_steps=3", f"model.vocab_size={tok.vocab_size}", "train.objective=sft",
               "train.packing=false")
    pre = train(cfg, Pretrain(cfg, ArrayShards(shards.ids, vocab_size=tok.vocab_size)), tmp_path / "pre",
                build_model(cfg), progress=False)
    assert pre.status == "done"
    res = train(cfg, SFT(cfg, shards), tmp_path / "sft", build_model(cfg), init_from=tmp_path / "pre",
                progress=False)
    assert res.status == "done" and all(np.isfinite(res.losses))


@pytest.mark.parametrize("share", [0.25, 0.3, 0.5])
def test_pretrain_mix_reaches_sft_batches_in_the_configured_share(tok, share):
    """train.pretrain_mix: that share of the rows are pretraining windows, every token a target, no doc ids."""
    shards, _ = _sft_shards(tok)
    pre_ids = np.arange(1000, dtype=np.int64) % 300 + 20  # recognisable: never an SFT token sequence
    mix = ArrayShards(pre_ids, doc_starts=(0, 400, 700), vocab_size=tok.vocab_size)
    B, T = 4, 56
    cfg = load_config("debug", [f"train.batch_size={B}", f"train.seq_len={T}", "train.packing=true",
                                f"train.pretrain_mix={share}", f"model.vocab_size={tok.vocab_size}"])
    obj = SFT(cfg, shards, mix_shards=mix)
    n_steps, pre_rows, slots = 10, 0, 0
    for step in range(n_steps):
        (batch,) = obj.next_batches()
        for r in range(B):
            x, y, d = batch["input_ids"][r], batch["targets"][r], batch["doc_ids"][r]
            start = int(x[0]) - 20
            window = (np.arange(start, start + T + 1) % 300 + 20).tolist()
            is_pre = x.tolist() == window[:-1]
            if is_pre:  # a consecutive window of the stream, across its documents, every next token a target
                assert y.tolist() == window[1:] and (d == d[0]).all()
            else:
                assert (y == IGNORE).any()  # an SFT row: prompts and padding are never targets
            pre_rows += is_pre
            slots += 1
        # running share within one row of the configured one at every step
        assert abs(pre_rows - share * slots) <= 1
    assert pre_rows == int(share * slots)
    # resume: the slot layout is a pure function of the position
    again = SFT(cfg, shards, mix_shards=mix)
    again.load_state_dict({"position": 5 * B})
    first = SFT(cfg, shards, mix_shards=mix)
    want = [first.next_batches()[0] for _ in range(8)][5:]
    for w in want:
        got = again.next_batches()[0]
        assert all(torch.equal(got[k], w[k]) for k in w)


def test_pretrain_mix_keeps_the_sft_rows_and_checks_its_data(tok):
    shards, _ = _sft_shards(tok)
    mix = ArrayShards(np.arange(500) % 300 + 20, vocab_size=tok.vocab_size)
    sets = ["train.batch_size=2", "train.seq_len=56", f"model.vocab_size={tok.vocab_size}"]
    plain = SFT(load_config("debug", sets), shards)
    mixed = SFT(load_config("debug", sets + ["train.pretrain_mix=0.5"]), shards, mix_shards=mix)
    sft_rows = [mixed._row(p) for p in range(20)]
    sft_rows = [r for r in sft_rows if r.mask is not None]
    # The SFT rows come in the same order as without the mix (the mix only interleaves).
    for i, row in enumerate(sft_rows):
        assert np.array_equal(row.ids, plain._row(i).ids)
    with pytest.raises(ConfigError, match="needs train.pretrain_mix_data"):
        SFT(load_config("debug", sets + ["train.pretrain_mix=0.2"]), shards)
    with pytest.raises(ConfigError, match="prepare --kind pretrain"):
        SFT(load_config("debug", sets + ["train.pretrain_mix=0.2"]), shards, mix_shards=shards)
    with pytest.raises(ConfigError, match="out of range"):
        load_config("debug", ["train.pretrain_mix=1.0"])


def test_init_from_a_run_with_another_tokenizer_is_an_error(tmp_path):
    """The data's meta.json names the sha256 of the tokenizer it was prepared with; another run's differs."""
    from scratchlm.runs import check_same_tokenizer

    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    (run / "tokenizer.json").write_text('{"model": "one"}')
    import hashlib

    same = hashlib.sha256(b'{"model": "one"}').hexdigest()
    (data / "meta.json").write_text(json.dumps({"tokenizer_hash": same}))
    check_same_tokenizer(run, data)  # the same tokenizer: fine
    (data / "meta.json").write_text(json.dumps({"tokenizer_hash": "ab" * 32}))
    with pytest.raises(ConfigError, match=r"sha256 [0-9a-f]{16}… \) is not the one|is not the one .*sha256 abababab"):
        check_same_tokenizer(run, data)
