"""Optimizers of the paper: SGD with momentum (VCR) and AdamW (pre-training, VQA, RefCOCO+)."""
import torch

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping


def build_optimizer(cfg, model):
    """SGD or AdamW (``SOLVER.OPTIMIZER``) over detectron2's default parameter groups
    (``SOLVER.WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM`` for normalisation layers, ``BIAS_LR_FACTOR``),
    with detectron2's gradient clipping or, for ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model``,
    clipping of the norm of all gradients together."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                    nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    elif name == "ADAMW":
        optimizer = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                                      weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return _clip_full_model_norm(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer)


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
