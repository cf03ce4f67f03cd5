"""Precomputed-feature mode: extraction into the feature cache (resumable), and a model fed
from the cache giving the same outputs as the end-to-end model."""
import json
import os

import numpy as np
import pytest
import torch

from vlbert_d2.data import VCRDatasetMapper
from vlbert_d2.data.feature_cache import FeatureCache, FeatureCacheError
from vlbert_d2.feature_extraction import extract_region_features


@pytest.fixture(scope="module")
def model_and_cache(tmp_path_factory, synthetic_dicts, synthetic_names):
    from detectron2.modeling import build_model

    from conftest import make_cfg
    from vlbert_d2.config import finalize_vlbert_config

    cfg = finalize_vlbert_config(make_cfg(DATASETS__TRAIN=(synthetic_names["train"],),
                                          MODEL__VLBERT__VISUAL_LN_INIT=1.0))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cache = str(tmp_path_factory.mktemp("features"))
    dicts = synthetic_dicts["train"] + synthetic_dicts["val"]
    mapper = VCRDatasetMapper(cfg, False)
    # An interrupted run (5 images saved in shards of 2), then the same command again.
    first = extract_region_features(model, dicts, mapper, cache, batch_size=2, num_workers=0,
                                    flush_every=2, max_images=5)
    second = extract_region_features(model, dicts, mapper, cache, batch_size=2, num_workers=1, flush_every=4)
    return cfg, model, cache, dicts, (first, second)


def test_extraction_resumes_without_duplicates_or_losses(model_and_cache):
    cfg, model, cache, dicts, (first, second) = model_and_cache
    images = {d["img_fn"] for d in dicts}
    assert first == {"extracted": 5, "skipped": 0, "total": len(images)}
    assert second == {"extracted": len(images) - 5, "skipped": 5, "total": len(images)}
    index = json.load(open(os.path.join(cache, "index.json")))
    assert set(index["items"]) == images
    rows = sum(np.load(os.path.join(cache, s + ".features.npy"), mmap_mode="r").shape[0] for s in index["shards"])
    assert rows == sum(v[2] for v in index["items"].values())  # every stored row belongs to one image
    again = extract_region_features(model, dicts, VCRDatasetMapper(cfg, False), cache, num_workers=0)
    assert again["extracted"] == 0 and again["skipped"] == len(images)


def test_precomputed_inputs_give_the_end_to_end_outputs(model_and_cache):
    cfg, model, cache, dicts, _ = model_and_cache
    e2e_mapper = VCRDatasetMapper(cfg, False)
    cfg = cfg.clone()
    cfg.MODEL.VLBERT.FEATURE_CACHE = cache
    pre_mapper = VCRDatasetMapper(cfg, False)
    e2e = [e2e_mapper(d) for d in dicts[:4]]
    pre = [pre_mapper(d) for d in dicts[:4]]
    assert "image" not in pre[0] and pre[0]["features"].shape == (len(e2e[0]["boxes"]), model.region_extractor.out_channels)
    with torch.no_grad():
        a, b = model(e2e), model(pre)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["logits"], y["logits"], rtol=1e-5, atol=1e-5)


def test_precomputed_model_freezes_the_cnn(model_and_cache):
    from detectron2.modeling import build_model

    cfg, _, cache, _, _ = model_and_cache
    cfg = cfg.clone()
    cfg.MODEL.VLBERT.FEATURE_CACHE = cache
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.region_extractor.parameters())
    assert all(p.requires_grad for p in model.fusion.parameters())


def test_cache_errors_name_the_cache_and_key(tmp_path, model_and_cache):
    _, _, cache, _, _ = model_and_cache
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FeatureCache(str(tmp_path))
    with pytest.raises(FeatureCacheError, match="no entry for 'nope/x.jpg'") as info:
        FeatureCache(cache).get("nope/x.jpg")
    assert cache in str(info.value)
