"""Mixed-precision training and evaluation (``SOLVER.AMP``).

detectron2 v0.6's :class:`~detectron2.engine.AMPTrainer` runs ``torch.cuda.amp.autocast`` in
fp16 and asserts that CUDA is there. :class:`MixedPrecisionTrainer` is that trainer with the
device and dtype of the config: fp16 on CUDA with dynamic loss scaling (as the official code's
apex ``FP16_LOSS_SCALE: 'dynamic'``), bf16 on CUDA or on the CPU without loss scaling (bf16
keeps fp32's exponent range, so gradients do not underflow).

Only the forward pass and the loss run under autocast; the weights, the gradients and the
optimizer's state stay fp32 (PyTorch's autocast casts per op), so checkpoints are the same as
those of an fp32 run.
"""
import time

import torch
from torch import nn

from detectron2.engine import AMPTrainer

__all__ = ["AMP_DTYPES", "amp_settings", "MixedPrecisionTrainer", "AutocastInference"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_settings(cfg):
    """``(device_type, dtype)`` of the config's mixed precision, or None when it is off.

    Raises:
        ValueError: an unknown ``SOLVER.AMP.PRECISION``, or fp16 on a device other than CUDA.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(AMP_DTYPES)}, got {precision!r}")
    device_type = torch.device(cfg.MODEL.DEVICE).type
    if precision == "float16" and device_type != "cuda":
        raise ValueError(f"SOLVER.AMP.PRECISION float16 needs a CUDA device (MODEL.DEVICE is "
                         f"{cfg.MODEL.DEVICE!r}): use bfloat16 on the CPU, or SOLVER.AMP.ENABLED False")
    return device_type, AMP_DTYPES[precision]


class MixedPrecisionTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` for a given device type and dtype.

    fp16 scales the loss with a :class:`torch.amp.GradScaler` (skipping the steps whose
    gradients overflow, as PyTorch's and apex's dynamic scaling do); bf16 uses a disabled one,
    so the step is a plain ``backward`` + ``optimizer.step``. Gradient clipping inside the
    optimizer's ``step`` (vlbert_d2/solver.py) sees unscaled gradients: ``GradScaler.step``
    unscales them first.
    """

    def __init__(self, model, data_loader, optimizer, device_type="cuda", dtype=torch.float16):
        self.device_type, self.dtype = device_type, dtype
        scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler)

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        if not self.grad_scaler.is_enabled():  # a disabled scaler has no state
            ret.pop("grad_scaler", None)
        return ret

    def load_state_dict(self, state_dict):
        if self.grad_scaler.is_enabled() and state_dict.get("grad_scaler"):
            super().load_state_dict(state_dict)
        else:  # bf16, or a checkpoint of an fp32/bf16 run resumed in fp16: the scale starts afresh
            super(AMPTrainer, self).load_state_dict(state_dict)


def _to_fp32(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_fp32(v) for v in x)
    return x


class AutocastInference(nn.Module):
    """Runs a model's inference under autocast and gives its floating outputs back in fp32
    (evaluators turn them into numbers and NumPy has no bf16)."""

    def __init__(self, model, device_type, dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, batched_inputs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return _to_fp32(self.model(batched_inputs))
