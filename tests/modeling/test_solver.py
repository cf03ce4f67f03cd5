"""Optimizers and the full-model gradient clipping of the official VCR training."""
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


def test_vcr_config_clips_like_the_official_training():
    import os

    from detectron2.config import get_cfg

    from conftest import REPO
    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    c = cfg.SOLVER.CLIP_GRADIENTS
    assert c.ENABLED and c.CLIP_TYPE == "full_model" and c.CLIP_VALUE == 10.0
