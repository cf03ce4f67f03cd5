"""Visual side of VL-BERT: RoI appearance features, geometry embedding and their fusion.

Paper section 3.2 ("visual feature embedding") and the official implementation: a C4 ResNet trunk
(stride 16), RoIAlign 14x14 on res4, a res5 head run with stride 1 and dilation 2, average pooling
to the appearance feature (2048-d for ResNet-50/101); the box geometry is embedded with sines and
cosines and concatenated with the appearance feature, then Dropout -> Linear -> ReLU.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_resnet_backbone
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.poolers import ROIPooler


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


def use_caffe_maxpool(backbone, norm):
    """Replace ``backbone.stem`` (detectron2's :class:`BasicStem`) by a :class:`CaffeMaxPoolStem`
    that keeps its convolution (the parameter names stay ``stem.conv1.*``)."""
    old = backbone.stem
    stem = CaffeMaxPoolStem(in_channels=old.in_channels, out_channels=old.out_channels, norm=norm)
    stem.conv1 = old.conv1
    backbone.stem = stem
    return backbone


def geometry_embedding(boxes, image_sizes, dim=2048, wave_length=1000.0):
    """Sinusoidal embedding of box geometry.

    Each box becomes (xc, yc, w, h) divided by the image width/height and multiplied by 100;
    each of the four numbers is divided by ``wave_length ** (i / (dim / 8))`` for
    ``i = 0 .. dim/8 - 1`` and gives its sines then its cosines; the coordinates are laid out one
    after the other ("coordinate-major"): ``[sin(xc) | cos(xc) | sin(yc) | cos(yc) | ...]``.

    Args:
        boxes (Tensor): (N, 4) boxes as (x1, y1, x2, y2) in pixels.
        image_sizes (Tensor): (N, 2) the (height, width) of each box's image.
        dim (int): output dimension, a multiple of 8.
        wave_length (float): base of the frequencies.

    Returns:
        Tensor: (N, dim).
    """
    if dim % 8 != 0:
        raise ValueError(f"geometry embedding dimension must be a multiple of 8, got {dim}")
    h = image_sizes[:, 0:1].to(boxes.dtype)
    w = image_sizes[:, 1:2].to(boxes.dtype)
    x1, y1, x2, y2 = boxes.unbind(-1)
    pos = torch.stack([(x1 + x2) / 2 / w[:, 0], (y1 + y2) / 2 / h[:, 0],
                       (x2 - x1) / w[:, 0], (y2 - y1) / h[:, 0]], dim=-1) * 100.0
    num_freqs = dim // 8
    freqs = wave_length ** (torch.arange(num_freqs, dtype=boxes.dtype, device=boxes.device) / num_freqs)
    angles = pos[:, :, None] / freqs  # (N, 4, num_freqs)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


class RegionFeatureExtractor(nn.Module):
    """Appearance features of RoIs: C4 ResNet trunk, RoIAlign on res4, dilated res5, pooling."""

    @configurable
    def __init__(self, *, backbone, pooler, res5, out_channels, use_masks):
        """
        Args:
            backbone (Backbone): trunk whose output "res4" has stride 16.
            pooler (ROIPooler): RoIAlign on res4.
            res5 (nn.Module): the res5 stage with stride 1 (and dilation), applied per RoI.
            out_channels (int): channels of res5 = dimension of the appearance feature.
            use_masks (bool): weight the res5 map by the RoI's instance mask before pooling.
        """
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.res5 = res5
        self.out_channels = out_channels
        self.use_masks = use_masks

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        if input_shape is None:
            input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
        backbone = build_resnet_backbone(cfg, input_shape)
        if cfg.MODEL.VLBERT.CAFFE_MAXPOOL:
            use_caffe_maxpool(backbone, cfg.MODEL.RESNETS.NORM)
        res4 = backbone.output_shape()["res4"]
        if res4.stride != 16:
            raise ValueError(f"VL-BERT expects a C4 trunk of stride 16, got stride {res4.stride}")
        r = cfg.MODEL.RESNETS
        if r.DEPTH < 50:
            raise ValueError("the res5 head uses bottleneck blocks: MODEL.RESNETS.DEPTH must be >= 50")
        bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8
        out_channels = r.RES2_OUT_CHANNELS * 8
        res5 = nn.Sequential(*ResNet.make_stage(
            BottleneckBlock,
            {50: 3, 101: 3, 152: 3}[r.DEPTH],
            stride_per_block=[1, 1, 1],  # the RoI map stays 14x14: stride 1, dilation instead
            in_channels=res4.channels,
            bottleneck_channels=bottleneck,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=cfg.MODEL.VLBERT.RES5_DILATION,
        ))
        pooler = ROIPooler(
            output_size=cfg.MODEL.VLBERT.POOLER_RESOLUTION,
            scales=(1.0 / res4.stride,),
            sampling_ratio=cfg.MODEL.VLBERT.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.VLBERT.POOLER_TYPE,
        )
        return {"backbone": backbone, "pooler": pooler, "res5": res5,
                "out_channels": out_channels, "use_masks": cfg.MODEL.VLBERT.USE_INSTANCE_MASKS}

    def forward(self, images, boxes, masks=None):
        """
        Args:
            images (Tensor): (B, 3, H, W) normalised, padded images.
            boxes (list[Boxes]): per image, (N_i, 4) RoIs in pixels of the padded image.
            masks (list[Tensor or None] or None): per image, (N_i, M, M) soft instance masks
                in box coordinates (or None: no weighting).

        Returns:
            Tensor: (sum N_i, C) appearance features, RoIs of all images concatenated.
        """
        res4 = self.backbone(images)["res4"]
        x = self.res5(self.pooler([res4], boxes))  # (R, C, M, M)
        if self.use_masks and masks is not None and any(m is not None for m in masks):
            weights = torch.cat([
                m if m is not None else x.new_ones((len(b), *x.shape[-2:]))
                for m, b in zip(masks, boxes)
            ]).to(x.dtype)
            if weights.shape[-2:] != x.shape[-2:]:
                weights = F.interpolate(weights[:, None], size=x.shape[-2:], mode="bilinear",
                                        align_corners=False)[:, 0]
            x = x * weights[:, None]
        return x.mean(dim=(2, 3))


class VisualFusion(nn.Module):
    """[geometry | appearance] -> Dropout -> Linear -> ReLU (official `obj_downsample`)."""

    def __init__(self, appearance_dim, geometry_dim, hidden_size, dropout, wave_length=1000.0):
        super().__init__()
        self.geometry_dim = geometry_dim
        self.wave_length = wave_length
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(geometry_dim + appearance_dim, hidden_size)

    def forward(self, appearance, boxes, image_sizes):
        """
        Args:
            appearance (Tensor): (N, C) RoI appearance features.
            boxes (Tensor): (N, 4) RoIs (x1, y1, x2, y2) in pixels.
            image_sizes (Tensor): (N, 2) (height, width) of each RoI's image (before padding).

        Returns:
            Tensor: (N, hidden_size) visual feature embedding of the RoIs.
        """
        geometry = geometry_embedding(boxes, image_sizes, self.geometry_dim, self.wave_length)
        return F.relu(self.linear(self.dropout(torch.cat([geometry, appearance], dim=-1))))

