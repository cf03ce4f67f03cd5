"""Optimizers of the paper: SGD with momentum (VCR) and AdamW (pre-training, VQA, RefCOCO+)."""
import logging

import torch

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

logger = logging.getLogger(__name__)


def build_optimizer(cfg, model):
    """SGD or AdamW (``SOLVER.OPTIMIZER``) over detectron2's default parameter groups
    (``SOLVER.WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM`` for normalisation layers, ``BIAS_LR_FACTOR``),
    with detectron2's gradient clipping or, for ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model``,
    clipping of the norm of all gradients together. ``SOLVER.TRUNK_LR_FACTOR`` scales the learning
    rate of the visual trunk (the model's ``region_extractor``: ResNet and res5 head)."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    params = _scale_trunk_lr(params, model, cfg.SOLVER.TRUNK_LR_FACTOR)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                    nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    elif name == "ADAMW":
        # foreach: the multi-tensor implementation, PyTorch's default on CUDA, here on CPU too
        # (there the default is a Python loop over the parameters). The same weights bit for bit
        # (tests/modeling/test_solver.py); measured 4% off a pipeline pre-training step on one thread.
        optimizer = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                                      eps=cfg.SOLVER.ADAM_EPS, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                      foreach=True)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return _clip_full_model_norm(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer)


TRUNK = "region_extractor."


def _scale_trunk_lr(groups, model, factor):
    """Split detectron2's parameter groups into trunk and non-trunk parts and multiply the
    trunk's learning rate by ``factor``. The trunk is every parameter whose name, without a DDP
    ``module.`` prefix, starts with ``region_extractor.``. The schedulers scale each group's own
    rate, so the ratio holds through warm-up and decay."""
    if factor < 0:
        raise ValueError(f"SOLVER.TRUNK_LR_FACTOR must be >= 0, got {factor}")
    if factor == 1.0:
        return groups
    trunk = {id(p) for n, p in model.named_parameters()
             if n.removeprefix("module.").startswith(TRUNK)}
    out, scaled = [], 0
    for group in groups:
        inside = [p for p in group["params"] if id(p) in trunk]
        outside = [p for p in group["params"] if id(p) not in trunk]
        if outside:
            out.append({**group, "params": outside})
        if inside:
            out.append({**group, "params": inside, "lr": group["lr"] * factor})
            scaled += sum(p.numel() for p in inside)
    if not scaled:
        logger.warning("SOLVER.TRUNK_LR_FACTOR %s: the model trains no visual-trunk parameter "
                       "(frozen, precomputed features or no trunk); the factor changes nothing", factor)
    else:
        logger.info("SOLVER.TRUNK_LR_FACTOR: %d trunk parameters at %s x the learning rate", scaled, factor)
    return out


def _clip_full_model_norm(optimizer, max_norm, norm_type):
    """Clip the norm of all gradients together before each step (the official VL-BERT's
    ``clip_grad_norm``; detectron2 v0.6's "norm" clips each parameter separately). Done, as
    detectron2 does for its own clipping, by giving the optimizer a subclass whose step clips."""
    base = type(optimizer)

    class FullModelClipped(base):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipped.__name__ = base.__name__ + "WithFullModelGradientClip"
    optimizer.__class__ = FullModelClipped
    return optimizer


def build_lr_scheduler(cfg, optimizer):
    """detectron2's schedulers, plus "WarmupLinearDecayLR" (``SOLVER.LR_SCHEDULER_NAME``): linear
    warm-up from ``WARMUP_FACTOR`` over ``WARMUP_ITERS``, then linear decay to 0 at ``MAX_ITER``,
    the schedule of the paper's VQA, RefCOCO+ and pre-training runs."""
    from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
    from detectron2.solver.lr_scheduler import LRMultiplier
    from fvcore.common.param_scheduler import CompositeParamScheduler, LinearParamScheduler

    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupLinearDecayLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    if cfg.SOLVER.WARMUP_METHOD != "linear":
        raise ValueError("WarmupLinearDecayLR needs SOLVER.WARMUP_METHOD 'linear'")
    max_iter = cfg.SOLVER.MAX_ITER
    warmup = min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0)
    # As BERT's (and the official VL-BERT's) WarmupLinearSchedule: the full rate is reached at
    # the end of the warm-up, then decays linearly to 0 at MAX_ITER.
    if warmup <= 0:
        sched = LinearParamScheduler(1.0, 0.0)
    elif warmup >= 1:  # a run shorter than its warm-up: warm-up only
        sched = LinearParamScheduler(cfg.SOLVER.WARMUP_FACTOR, 1.0)
    else:
        sched = CompositeParamScheduler(
            [LinearParamScheduler(cfg.SOLVER.WARMUP_FACTOR, 1.0), LinearParamScheduler(1.0, 0.0)],
            lengths=[warmup, 1.0 - warmup], interval_scaling=["rescaled", "rescaled"])
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)
