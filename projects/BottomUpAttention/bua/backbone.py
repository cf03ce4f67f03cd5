"""The C4 ResNet trunk of the detector: detectron2's ResNet with a Caffe-style stem max pool, and
:class:`FoldedResNet`, its inference (and that of the box head's res5) with the frozen batch
norms folded into the convolutions."""
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, build_resnet_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

# The stem lives in the library: VL-BERT's trunk uses it too (MODEL.VLBERT.CAFFE_MAXPOOL).
from vlbert_d2.modeling.visual import CaffeMaxPoolStem, use_caffe_maxpool

__all__ = ["CaffeMaxPoolStem", "FoldedResNet", "build_bua_resnet_backbone"]

# oneDNN's convolution, which F.conv2d dispatches to on CPUs in most cases (see FoldedResNet.conv).
_mkldnn_convolution = getattr(torch, "mkldnn_convolution", None)


@BACKBONE_REGISTRY.register()
def build_bua_resnet_backbone(cfg, input_shape):
    """detectron2's :func:`build_resnet_backbone`, with :class:`CaffeMaxPoolStem` when
    ``MODEL.BUA.CAFFE_MAXPOOL`` (the stem's conv, already frozen per ``BACKBONE.FREEZE_AT``,
    is kept, so the parameter names stay ``backbone.stem.conv1.*``)."""
    backbone = build_resnet_backbone(cfg, input_shape)
    if cfg.MODEL.BUA.CAFFE_MAXPOOL:
        use_caffe_maxpool(backbone, cfg.MODEL.RESNETS.NORM)
    return backbone


def _fold_norm(conv):
    """``conv`` (a detectron2 :class:`Conv2d`) and its norm as one convolution: ``(weight, bias)``
    in float64 (folded in double, so that folding adds no rounding of its own), or None when the
    norm cannot be folded (another kind, or a BatchNorm in training mode)."""
    norm = conv.norm
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else None
    if norm is None:
        return weight, bias
    if isinstance(norm, FrozenBatchNorm2d):
        gamma, beta = norm.weight, norm.bias
    elif (isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_mean is not None
          and norm.running_var is not None):
        gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        beta = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    else:
        return None
    scale = gamma.detach().double() * torch.rsqrt(norm.running_var.detach().double() + norm.eps)
    shift = beta.detach().double() - norm.running_mean.detach().double() * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view(-1, 1, 1, 1), shift


class FoldedResNet:
    """Inference of detectron2 ResNet parts with each convolution's frozen norm folded into it.

    detectron2's :class:`Conv2d` applies its ``FrozenBatchNorm2d`` as a separate pass over the
    conv's output; this runs the same blocks with one convolution (weight scaled, bias shifted)
    per conv, in ``memory_format`` (channels-last: oneDNN's fast path on CPUs, tensor-core
    layouts on GPUs). The modules are not changed: the folded weights are a cache, rebuilt when
    a parameter or buffer of ``roots`` is modified in place or replaced (tensor versions), so
    checkpoint loading, training and in-place edits work on the modules as usual.

    Blocks, stems and norms it does not know (anything but :class:`BottleneckBlock`,
    :class:`BasicBlock`, :class:`BasicStem` / :class:`CaffeMaxPoolStem`, ``FrozenBatchNorm2d`` or
    an eval ``BatchNorm2d``) run as their own modules, so the result is always the modules'.
    """

    def __init__(self, roots, memory_format=torch.channels_last):
        """
        Args:
            roots (list[nn.Module]): the modules whose convolutions are folded (e.g. a backbone
                and a res5 stage).
            memory_format (torch.memory_format): of the folded weights and of the activations.
        """
        self.roots = list(roots)
        self.memory_format = memory_format
        self._key = None
        self._folded = {}

    def _state_key(self):
        key = []
        for root in self.roots:
            for t in itertools.chain(root.parameters(), root.buffers()):
                try:
                    version = t._version
                except RuntimeError:  # an inference tensor has no version counter: never cached
                    return None
                key.append((id(t), version, t.data_ptr(), t.device, t.dtype))
        return tuple(key)

    def refresh(self):
        """Fold the convolutions again if any tensor of the roots changed since the last fold."""
        key = self._state_key()
        if key is not None and key == self._key:
            return
        folded = {}
        for root in self.roots:
            for m in root.modules():
                if isinstance(m, Conv2d) and m.padding_mode == "zeros":
                    wb = _fold_norm(m)
                    if wb is not None:
                        w, b = wb
                        folded[m] = (w.to(m.weight.dtype).contiguous(memory_format=self.memory_format),
                                     None if b is None else b.to(m.weight.dtype))
        self._folded, self._key = folded, key

    def conv(self, conv, x):
        """``conv(x)`` with its norm folded (its activation, if any, applied after).

        On a CPU in float32 the convolution is oneDNN's, always: PyTorch's ``F.conv2d`` picks it
        too, except for 1 x 1 stride-1 convolutions on one image with one thread, where it
        falls back to a GEMM that is 2x slower here (the trunk's 1 x 1 convolutions).
        """
        folded = self._folded.get(conv)
        if folded is None:
            return conv(x)
        if _mkldnn_convolution is not None and x.device.type == "cpu" and x.dtype == torch.float32 \
                and torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available():
            x = _mkldnn_convolution(x, folded[0], folded[1], conv.padding, conv.stride, conv.dilation, conv.groups)
        else:
            x = F.conv2d(x, folded[0], folded[1], conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv.activation(x) if conv.activation is not None else x

    def block(self, block, x):
        """One residual block, as :meth:`BottleneckBlock.forward` / :meth:`BasicBlock.forward`."""
        if type(block) is BottleneckBlock:
            out = F.relu_(self.conv(block.conv1, x))
            out = F.relu_(self.conv(block.conv2, out))
            out = self.conv(block.conv3, out)
        elif type(block) is BasicBlock:
            out = F.relu_(self.conv(block.conv1, x))
            out = self.conv(block.conv2, out)
        else:
            return block(x)
        out += self.conv(block.shortcut, x) if block.shortcut is not None else x
        return F.relu_(out)

    def blocks(self, blocks, x):
        """A sequence of blocks (a ResNet stage, or the res5 of a C4 box head) on ``x``."""
        x = x.contiguous(memory_format=self.memory_format)
        for block in blocks:
            x = self.block(block, x)
        return x

    def stem(self, stem, x):
        x = x.contiguous(memory_format=self.memory_format)
        if type(stem) is CaffeMaxPoolStem:
            return F.max_pool2d(F.relu_(self.conv(stem.conv1, x)), kernel_size=3, stride=2, padding=0, ceil_mode=True)
        if type(stem) is BasicStem:
            return F.max_pool2d(F.relu_(self.conv(stem.conv1, x)), kernel_size=3, stride=2, padding=1)
        return stem(x)

    def resnet(self, backbone, x):
        """``backbone(x)`` for a detectron2 :class:`ResNet` (another backbone: its own forward).

        Returns:
            dict[str, Tensor]: its output features, in ``memory_format``.
        """
        if not isinstance(backbone, ResNet) or backbone.num_classes is not None:
            return backbone(x)
        outputs = {}
        x = self.stem(backbone.stem, x)
        if "stem" in backbone._out_features:
            outputs["stem"] = x
        for name, stage in zip(backbone.stage_names, backbone.stages):
            x = self.blocks(stage, x)
            if name in backbone._out_features:
                outputs[name] = x
        return outputs
