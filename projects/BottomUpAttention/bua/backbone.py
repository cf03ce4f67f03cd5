"""The C4 ResNet trunk of the detector: detectron2's ResNet with a Caffe-style stem max pool."""
import torch.nn.functional as F

from detectron2.modeling import BACKBONE_REGISTRY, build_resnet_backbone
from detectron2.modeling.backbone.resnet import BasicStem


class CaffeMaxPoolStem(BasicStem):
    """detectron2's stem (7x7 conv, stride 2, ReLU) with Caffe's max pool.

    Caffe pools with kernel 3, stride 2, no padding and rounds the output size up; detectron2
    pads by 1 and rounds down. The two give the same size for even inputs but sample different
    windows, so weights trained in Caffe see shifted features with detectron2's pool.
    """

    def forward(self, x):
        """
        Args:
            x (Tensor): (B, 3, H, W) normalised images.

        Returns:
            Tensor: (B, C, ceil((ceil(H / 2) - 3) / 2) + 1, ...) at stride 4.
        """
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


@BACKBONE_REGISTRY.register()
def build_bua_resnet_backbone(cfg, input_shape):
    """detectron2's :func:`build_resnet_backbone`, with :class:`CaffeMaxPoolStem` when
    ``MODEL.BUA.CAFFE_MAXPOOL`` (the stem's conv, already frozen per ``BACKBONE.FREEZE_AT``,
    is kept, so the parameter names stay ``backbone.stem.conv1.*``)."""
    backbone = build_resnet_backbone(cfg, input_shape)
    if cfg.MODEL.BUA.CAFFE_MAXPOOL:
        old = backbone.stem
        stem = CaffeMaxPoolStem(in_channels=old.in_channels, out_channels=old.out_channels,
                                norm=cfg.MODEL.RESNETS.NORM)
        stem.conv1 = old.conv1
        backbone.stem = stem
    return backbone
