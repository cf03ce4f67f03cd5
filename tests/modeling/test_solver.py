"""Optimizers and the full-model gradient clipping of the official VCR training."""
import pytest
import torch

from conftest import make_cfg
from vlbert_d2.solver import build_optimizer


def _grads_after_step(cfg):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    opt.step()
    return torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())), opt


def test_full_model_clipping_bounds_the_total_norm():
    cfg = make_cfg(SOLVER__OPTIMIZER="SGD", SOLVER__CLIP_GRADIENTS__ENABLED=True,
                   SOLVER__CLIP_GRADIENTS__CLIP_TYPE="full_model", SOLVER__CLIP_GRADIENTS__CLIP_VALUE=10.0)
    norm, opt = _grads_after_step(cfg)
    assert abs(norm.item() - 10.0) < 1e-3 and isinstance(opt, torch.optim.SGD)


def test_no_clipping_and_adamw():
    cfg = make_cfg(SOLVER__OPTIMIZER="ADAMW", SOLVER__CLIP_GRADIENTS__ENABLED=False)
    norm, opt = _grads_after_step(cfg)
    assert norm.item() > 100.0 and isinstance(opt, torch.optim.AdamW)


def test_adamw_is_the_multi_tensor_one_with_the_loop_implementations_weights():
    """AdamW runs PyTorch's multi-tensor (foreach) implementation on CPU too, and it ends with the
    weights of PyTorch's per-parameter loop (its CPU default), bit for bit: detectron2's parameter
    groups (weight decay off for norms), a changing learning rate, gradient clipping."""
    cfg = make_cfg(SOLVER__OPTIMIZER="ADAMW", SOLVER__BASE_LR=1e-3, SOLVER__WEIGHT_DECAY=1e-2,
                   SOLVER__CLIP_GRADIENTS__ENABLED=True, SOLVER__CLIP_GRADIENTS__CLIP_TYPE="full_model",
                   SOLVER__CLIP_GRADIENTS__CLIP_VALUE=1.0)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(500, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16))

    ours, theirs = model(), model()
    opt = build_optimizer(cfg, ours)
    assert opt.defaults["foreach"] is True
    reference = torch.optim.AdamW(
        [{**g, "params": [dict(theirs.named_parameters())[n] for n, p in ours.named_parameters()
                          if any(p is q for q in g["params"])]} for g in opt.param_groups],
        lr=1e-3, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.ADAM_EPS, weight_decay=1e-2, foreach=False)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 1.0)
        for o in (opt, reference):
            for group in o.param_groups:
                group["lr"] = 1e-3 * (step + 1) / 6
        opt.step()
        reference.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours[0].weight, model()[0].weight)  # it did train


def test_vcr_config_clips_like_the_official_training():
    import os

    from detectron2.config import get_cfg

    from conftest import REPO
    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    c = cfg.SOLVER.CLIP_GRADIENTS
    assert c.ENABLED and c.CLIP_TYPE == "full_model" and c.CLIP_VALUE == 10.0


class _WithTrunk(torch.nn.Module):
    """The two parts the optimizer tells apart: ``region_extractor`` (the visual trunk) and the rest."""

    def __init__(self):
        super().__init__()
        self.region_extractor = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 2)


class _DDPLike(torch.nn.Module):  # parameter names get a "module." prefix, as under DDP
    def __init__(self, inner):
        super().__init__()
        self.module = inner


def _first_adamw_step(model, **overrides):
    cfg = make_cfg(SOLVER__OPTIMIZER="ADAMW", SOLVER__BASE_LR=0.01, SOLVER__WEIGHT_DECAY=0.0,
                   SOLVER__WEIGHT_DECAY_BIAS=0.0, SOLVER__CLIP_GRADIENTS__ENABLED=False, **overrides)
    opt = build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return {n: (before[n] - p.detach()).abs().max().item() for n, p in model.named_parameters()}


def test_trunk_lr_factor_by_hand():
    """AdamW's first step moves each weight by lr * g / (|g| + eps), i.e. by lr for g = 1: the
    trunk by 0.01 x 0.1, the rest by 0.01; biases by BIAS_LR_FACTOR (2) times that."""
    for model, prefix in ((_WithTrunk(), ""), (_DDPLike(_WithTrunk()), "module.")):
        moved = _first_adamw_step(model, SOLVER__TRUNK_LR_FACTOR=0.1, SOLVER__BIAS_LR_FACTOR=2.0)
        expected = {"region_extractor.weight": 0.001, "region_extractor.bias": 0.002,
                    "head.weight": 0.01, "head.bias": 0.02}
        for name, step in expected.items():
            assert abs(moved[prefix + name] - step) < 1e-7, (prefix + name, moved[prefix + name])


def test_trunk_lr_factor_default_and_bad_value():
    moved = _first_adamw_step(_WithTrunk())
    assert abs(moved["region_extractor.weight"] - 0.01) < 1e-7 and abs(moved["head.weight"] - 0.01) < 1e-7
    with pytest.raises(ValueError, match="TRUNK_LR_FACTOR must be >= 0"):
        _first_adamw_step(_WithTrunk(), SOLVER__TRUNK_LR_FACTOR=-1.0)


def test_trunk_lr_factor_holds_through_the_schedule():
    from vlbert_d2.solver import build_lr_scheduler

    model = _WithTrunk()
    cfg = make_cfg(SOLVER__OPTIMIZER="ADAMW", SOLVER__BASE_LR=0.01, SOLVER__TRUNK_LR_FACTOR=0.25,
                   SOLVER__BIAS_LR_FACTOR=1.0, SOLVER__LR_SCHEDULER_NAME="WarmupLinearDecayLR",
                   SOLVER__MAX_ITER=10, SOLVER__WARMUP_ITERS=2, SOLVER__WARMUP_FACTOR=0.1)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    trunk = {id(p) for p in model.region_extractor.parameters()}
    for it in range(9):
        rates = {id(p) in trunk: g["lr"] for g in opt.param_groups for p in g["params"]}
        assert rates[False] > 0 and abs(rates[True] - 0.25 * rates[False]) < 1e-12, (it, rates)
        opt.step()
        sched.step()


def test_trunk_lr_factor_reaches_the_whole_trunk_of_the_model(tiny_cfg):
    """On the real model: every trained parameter of the ResNet trunk and the res5 head is
    scaled, and nothing else."""
    from detectron2.modeling import build_model

    tiny_cfg.MODEL.BACKBONE.FREEZE_AT = 2
    tiny_cfg.MODEL.RESNETS.NORM = "FrozenBN"
    tiny_cfg.SOLVER.TRUNK_LR_FACTOR = 0.01
    tiny_cfg.SOLVER.BIAS_LR_FACTOR = 1.0
    model = build_model(tiny_cfg)
    opt = build_optimizer(tiny_cfg, model)
    scaled = {id(p) for g in opt.param_groups if g["lr"] < tiny_cfg.SOLVER.BASE_LR for p in g["params"]}
    trunk = {id(p) for p in model.region_extractor.parameters() if p.requires_grad}
    assert trunk and scaled == trunk
    assert {id(p) for p in model.region_extractor.res5.parameters()} <= scaled
