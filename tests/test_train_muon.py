"""Muon (train/muon.py): the update equals torch.optim.Muon's, AdamW groups equal torch.optim.AdamW's, which parameters
go where, the loop's wiring (config, resume check, DeepSpeed refusal), and that Muon trains on the built-in corpus."""

import numpy as np
import pytest
import torch

from scratchlm.config import ConfigError, load_config
from scratchlm.runs import build_model
from scratchlm.train.loop import build_optimizer, train
from scratchlm.train.muon import MuonAdamW, muon_param_names, newton_schulz
from scratchlm.train.objectives import Pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def test_newton_schulz_brings_every_singular_value_near_one():
    g = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    g[:, :8] *= 100.0  # a few dominant directions, as a raw gradient has
    for m in (g, g.T):
        s = torch.linalg.svdvals(newton_schulz(m).float())
        assert newton_schulz(m).shape == m.shape
        assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic lands σ in ~[0.7, 1.2], not exactly 1
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    # the direction is U·Vᵀ's: the cosine between them is close to 1
    o = newton_schulz(g).float()
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vt).flatten(), dim=0) > 0.97


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])  # wide and tall: the transpose and the lr scale both ways
@pytest.mark.parametrize("nesterov,adjust", [(True, "original"), (False, "match_rms_adamw")])
def test_update_equals_torch_muon_over_several_steps(shape, nesterov, adjust):
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(*shape, generator=gen)
    ours_p, ref_p = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9)
    ours = MuonAdamW([{"params": [ours_p], "use_muon": True, "nesterov": nesterov, "ns_steps": 5, "adjust": adjust,
                       **kw}])
    ref = torch.optim.Muon([ref_p], nesterov=nesterov, ns_steps=5, adjust_lr_fn=adjust, **kw)
    for step in range(6):
        g = torch.randn(*shape, generator=gen)
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(ours_p.data, ref_p.data, rtol=1e-6, atol=1e-6, msg=f"step {step}")
        torch.testing.assert_close(ours.state[ours_p]["momentum_buffer"], ref.state[ref_p]["momentum_buffer"])
    assert not torch.equal(ours_p.data, w0)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_groups_update_as_torch_adamw(fused):
    gen = torch.Generator().manual_seed(2)
    shapes = [(8, 12), (12,), (5, 8)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    ours_ps = [torch.nn.Parameter(t.clone()) for t in init]
    ref_ps = [torch.nn.Parameter(t.clone()) for t in init]
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ours = MuonAdamW([{"params": ours_ps[::2], "use_muon": False, "weight_decay": 0.1, **hp},
                      {"params": ours_ps[1:2], "use_muon": False, "weight_decay": 0.0, **hp}], fused=fused)
    ref = torch.optim.AdamW([{"params": ref_ps[::2], "weight_decay": 0.1},
                             {"params": ref_ps[1:2], "weight_decay": 0.0}], fused=fused, **hp)
    for _ in range(5):
        for a, b in zip(ours_ps, ref_ps):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        for a, b in zip(ours_ps, ref_ps):
            torch.testing.assert_close(a.data, b.data, rtol=0, atol=0)


def _debug(*sets):
    return load_config("debug", list(sets))


DEBUG_MUON = [f"layers.{i}.{m}.weight" for i in range(2)
              for m in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w3", "ffn.w2")]


def test_param_split_on_the_debug_transformer():
    cfg = _debug("train.optimizer=muon")
    model = build_model(cfg)
    assert muon_param_names(model) == DEBUG_MUON
    opt = build_optimizer(model, cfg, CPU)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["use_muon"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups]
    assert groups[0] == (True, cfg.train.muon_weight_decay, DEBUG_MUON)
    # AdamW: the (tied) embedding with decay; norm gains without
    assert groups[1] == (False, cfg.train.weight_decay, ["embed.weight"])
    assert groups[2][:2] == (False, 0.0) and all(n.endswith("norm.weight") for n in groups[2][2])
    assert sorted(n for g in groups for n in g[2]) == sorted(names.values())  # every parameter exactly once
    # the schedule's lr reaches Muon at muon_lr: set_lr multiplies by lr_scale
    assert opt.param_groups[0]["lr_scale"] * cfg.train.lr == pytest.approx(cfg.train.muon_lr)
    assert [g["lr_scale"] for g in opt.param_groups[1:]] == [1.0, 1.0]


def test_adamw_default_builds_the_same_groups_as_before():
    cfg = _debug()
    assert cfg.train.optimizer == "adamw"
    model = build_model(cfg)
    opt = build_optimizer(model, cfg, CPU)
    assert type(opt) is torch.optim.AdamW
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for p in opt.param_groups[0]["params"]]
    assert decayed == ["embed.weight"] + DEBUG_MUON and opt.param_groups[0]["weight_decay"] == cfg.train.weight_decay
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.0


def test_output_heads_stay_on_adamw():
    from scratchlm.model.reward import RewardModel

    model = build_model(_debug("model.tie_embeddings=false"))
    assert muon_param_names(model) == DEBUG_MUON  # lm_head [V, D], untied: still AdamW's
    assert muon_param_names(RewardModel(model)) == [f"lm.{n}" for n in DEBUG_MUON]  # the score head [1, D] too


def test_moe_experts_go_to_muon_and_the_router_to_adamw():
    cfg = _debug("model.n_routed_experts=4", "model.n_shared_experts=1", "model.top_k=2", "model.first_dense_layers=1",
                 "train.optimizer=muon")
    names = muon_param_names(build_model(cfg))
    assert {f"layers.1.ffn.experts.{e}.{w}.weight" for e in range(4) for w in ("w1", "w2", "w3")} <= set(names)
    assert {f"layers.1.ffn.shared.{w}.weight" for w in ("w1", "w2", "w3")} <= set(names)
    assert not any("gate" in n for n in names)


def test_mla_and_mtp_projections_go_to_muon():
    cfg = _debug("model.attention=mla", "model.mtp_depth=1", "train.optimizer=muon")
    model = build_model(cfg)
    names = muon_param_names(model)
    matrices = [n for n, p in model.named_parameters() if p.dim() == 2 and n != "embed.weight"]
    assert names == matrices and any(n.startswith("mtp.0.proj") for n in names)


def test_lora_factors_stay_on_adamw():
    from scratchlm.model.lora import apply_lora

    cfg = _debug("train.optimizer=muon", "lora.rank=4")
    model = build_model(cfg)
    apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, "wq,wv,w1")
    assert muon_param_names(model) == []  # frozen base weights and the A/B factors: nothing for Muon
    opt = build_optimizer(model, cfg, CPU)
    trained = [p for g in opt.param_groups for p in g["params"]]
    assert trained and all(not g["use_muon"] for g in opt.param_groups)


def test_muon_with_deepspeed_is_refused():
    pytest.importorskip("deepspeed")
    from scratchlm.train.distributed import DistInfo
    from scratchlm.train.loop import make_backend

    cfg = _debug("train.optimizer=muon", "train.deepspeed=configs/deepspeed_zero2.json")
    with pytest.raises(ConfigError, match="train.optimizer=muon with train.deepspeed"):
        make_backend(cfg, DistInfo(), Pretrain(cfg, _byte_shards(2000)))


# -- the loop ----------------------------------------------------------------------------------------------


class _Shards:
    """Token shards held in memory (the read API of scratchlm.shards.datasets.Shards)."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, dtype=np.uint16)
        self.mask, self.doc_starts, self.kind, self.n_tokens = None, np.asarray([0]), "pretrain", len(self.ids)
        self.meta = {"kind": "pretrain", "vocab_size": 512}

    def read(self, start, length):
        return self.ids[start:start + length]

    def read_mask(self, start, length):
        return None


def _byte_shards(n):
    """The built-in corpus as UTF-8 bytes: ids 0-255 fit the debug preset's 512 vocabulary, no tokenizer needed."""
    from scratchlm.data.corpus import corpus_texts

    data = "\n\n".join(corpus_texts("train")).encode("utf-8")[:n]
    return _Shards(np.frombuffer(data, dtype=np.uint8))


SMALL = ["train.batch_size=4", "train.seq_len=32", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
         "train.warmup_steps=2"]


def _run(cfg, out, n_bytes=60_000, **kw):
    return train(cfg, Pretrain(cfg, _byte_shards(n_bytes)), out, build_model(cfg), progress=False, **kw)


def test_muon_trains_on_the_builtin_corpus(tmp_path):
    # 40 steps on the corpus's first 400 bytes: enough text that memorising it needs the attention and MLP matrices.
    # With muon_lr=0 only the AdamW part (embedding, norms) learns, and the loss stays well above Muon's.
    sets = SMALL + ["train.max_steps=40", "train.optimizer=muon", "train.schedule=constant"]
    muon = _run(_debug(*sets), tmp_path / "muon", n_bytes=400)
    frozen = _run(_debug(*sets, "train.muon_lr=0"), tmp_path / "frozen", n_bytes=400)
    first, last = np.mean(muon.losses[:5]), np.mean(muon.losses[-5:])
    assert last < first - 3.0, (first, last)  # measured: 5.7 → 2.0
    assert last < np.mean(frozen.losses[-5:]) - 0.4, (last, frozen.losses[-5:])  # measured: 2.0 vs 2.8


def test_resume_with_another_optimizer_is_an_error(tmp_path):
    _run(_debug(*SMALL, "train.max_steps=4"), tmp_path / "run", stop_at_step=2)
    with pytest.raises(ConfigError, match="train.optimizer=adamw, this run asks for train.optimizer=muon"):
        _run(_debug(*SMALL, "train.max_steps=4", "train.optimizer=muon"), tmp_path / "run", resume=True)
