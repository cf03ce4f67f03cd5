"""Batched evaluation (TEST.IMS_PER_BATCH): the loader covers every record once, in order, and
each record's scores do not depend on the batch it is padded into."""
import pytest
import torch

from vlbert_d2.data import build_vlbert_mapper
from vlbert_d2.data.test_loader import build_vlbert_test_loader


def _loader(cfg, name, batch_size):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.IMS_PER_BATCH = batch_size
    return build_vlbert_test_loader(cfg, name, build_vlbert_mapper(cfg, is_train=False))


def test_batches_cover_every_record_once_in_order(tiny_cfg, synthetic_names, synthetic_dicts):
    batches = list(_loader(tiny_cfg, synthetic_names["val"], 3))
    assert [len(b) for b in batches] == [3, 3, 2]  # 8 records
    assert [x["annot_id"] for b in batches for x in b] == [d["annot_id"] for d in synthetic_dicts["val"]]


def test_bad_batch_size_is_refused(tiny_cfg, synthetic_names):
    with pytest.raises(ValueError, match="TEST.IMS_PER_BATCH must be >= 1"):
        _loader(tiny_cfg, synthetic_names["val"], 0)


def test_scores_do_not_depend_on_the_batch(tiny_cfg, synthetic_names):
    """Records of different text lengths and RoI counts padded together score as alone."""
    from vlbert_d2.engine import VLBertTrainer

    torch.manual_seed(0)
    model = VLBertTrainer.build_model(tiny_cfg).eval()
    scores = {}
    for batch_size in (1, 4):
        with torch.no_grad():
            for batch in _loader(tiny_cfg, synthetic_names["val"], batch_size):
                for x, out in zip(batch, model(batch)):
                    scores.setdefault(x["annot_id"], []).append(out["scores"])
    lengths = {len(b) for b in scores.values()}
    assert lengths == {2}
    for annot_id, (alone, batched) in scores.items():
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5, msg=annot_id)
