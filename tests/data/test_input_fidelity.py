"""Inputs built as the official VL-BERT builds them (issue 12, items 5, 8 and 9). Every expected
value below is written by hand from the official code's rules, not computed with the code under
test:

* text-only pre-training input: the word pieces without [CLS]/[SEP], then the [END] element in
  the visual segment at position (text length + 1) (official ``GeneralCorpus`` + the multi-task
  model's ``VisualLinguisticBert.embedding`` with no RoI);
* the whole image is ``[0, 0, w - 1, h - 1]``, a flip maps x to ``W - 1 - x`` and every box is
  clamped to ``[0, W - 1] x [0, H - 1]`` after the resize (the official VCR, VQA, RefCOCO+ and
  pre-training loaders);
* pre-training evaluation on a bounded, fixed sample of the text corpus, which is never loaded
  into memory.
"""
import math
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import transforms as T

from conftest import REPO, make_cfg

TINY_PRETRAIN = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticPretrain.yaml")


def pretrain_cfg(*opts):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(TINY_PRETRAIN)
    cfg.merge_from_list(["MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0", *opts])
    return cfg


# ---------------------------------------------------------------------------------------------
# Item 5: the text-only pre-training input


def test_text_only_sample_is_word_pieces_without_cls_and_sep(tokenizer):
    from vlbert_d2.data import PretrainDatasetMapper

    cfg = pretrain_cfg("MODEL.VLBERT.PRETRAIN.MLM_PROB", "0.0")
    out = PretrainDatasetMapper(cfg, is_train=False)({"text": "the cat sat on the mat", "source": "c.txt:1"})
    expected = tokenizer.convert_tokens_to_ids(["the", "cat", "sat", "on", "the", "mat"])
    assert out["input_ids"].tolist() == [expected]
    assert out["token_type_ids"].tolist() == [[0] * 6] and out["text_mask"].tolist() == [[1] * 6]
    assert out["mlm_labels"].tolist() == [[-1] * 6]
    # With masking, the labels line up with the pieces (no [CLS] slot in front).
    cfg = pretrain_cfg("MODEL.VLBERT.PRETRAIN.MLM_PROB", "1.0")
    out = PretrainDatasetMapper(cfg, is_train=False)({"text": "the cat sat on the mat", "source": "c.txt:1"})
    assert out["mlm_labels"].tolist() == [expected]


def test_text_only_sequence_ends_with_end_in_the_visual_segment(tokenizer):
    """Rows of 3 and 5 word pieces: the transformer sees [w1 w2 w3 pad pad END] and
    [w1 .. w5 END]; END has segment 2 and position 3 + 1 = 4 (resp. 5 + 1 = 6), as the
    official embedding puts it one position after the (empty) RoIs' position."""
    from detectron2.modeling import build_model

    from vlbert_d2.data import PretrainDatasetMapper

    cfg = pretrain_cfg("MODEL.VLBERT.PRETRAIN.MLM_PROB", "0.0", "MODEL.VLBERT.VISUAL_LN_INIT", "1.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    m = PretrainDatasetMapper(cfg, is_train=False)
    short = m({"text": "a red ball", "source": "c.txt:1"})
    long = m({"text": "a red ball on the left", "source": "c.txt:2"})
    n_short, n_long = short["input_ids"].shape[1], long["input_ids"].shape[1]
    assert (n_short, n_long) == (3, 6)  # "a red ball" / "a red ball on the left"
    seen = {}
    bert = model.vl_bert.bert
    hook = bert.register_forward_hook(lambda mod, args, kwargs, out: seen.update(kwargs, out=out), with_kwargs=True)
    with torch.no_grad():
        model([short, long])
    hook.remove()
    # Hand-written layout of the padded batch: [text (6 slots) | END].
    assert seen["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 4], [0, 1, 2, 3, 4, 5, 7]]
    assert seen["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0, 2]]
    assert seen["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1]]
    emb = seen["inputs_embeds"]
    torch.testing.assert_close(emb[0, 6], model.vl_bert.end_embedding)
    torch.testing.assert_close(emb[1, 6], model.vl_bert.end_embedding)
    # The words: word embedding + visual LayerNorm(aux text-only vector), as the official.
    ln = model.vl_bert.visual_ln_text(model.pretrain_embeddings.text_only_visual)
    words = model.vl_bert.word_embeddings(long["input_ids"][0])
    torch.testing.assert_close(emb[1, :6], words + ln)
    # The same outputs as BERT fed the packed official sequence of the short row alone:
    # [a red ball END] at positions [0 1 2 4], segments [0 0 0 2].
    with torch.no_grad():
        packed = torch.cat([emb[0, :3], model.vl_bert.end_embedding[None]])[None]
        ref = bert(inputs_embeds=packed, token_type_ids=torch.tensor([[0, 0, 0, 2]]),
                   position_ids=torch.tensor([[0, 1, 2, 4]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    torch.testing.assert_close(seen["out"].last_hidden_state[0, :3], ref.last_hidden_state[0, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["out"].last_hidden_state[0, 6], ref.last_hidden_state[0, 3], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Item 9: the whole image and the box convention of every task


def test_resize_flip_and_clamp_follow_the_official_pixel_convention():
    """A 40 x 30 image resized x2 to 80 x 60, then flipped: official Resize (x * 2), flip
    (x -> 79 - x, the corners swapped), clamp to [0, 79] x [0, 59]."""
    from vlbert_d2.data.common import resize_image_and_boxes, whole_image_box

    image = np.zeros((30, 40, 3), np.uint8)
    boxes = np.array([whole_image_box(40, 30), [30, 10, 40, 30]], np.float32)
    assert boxes[0].tolist() == [0, 0, 39, 29]
    resize = T.ResizeShortestEdge(60, 1000, "choice")
    _, out, _, flipped = resize_image_and_boxes([resize], image, boxes)
    assert not flipped
    assert out.tolist() == [[0, 0, 78, 58], [60, 20, 79, 59]]  # [60, 20, 80, 60] clamped
    img, out, _, flipped = resize_image_and_boxes([resize, T.RandomFlip(prob=1.0)], image, boxes)
    assert flipped and tuple(img.shape) == (3, 60, 80)
    # whole: [79 - 78, 0, 79 - 0, 58]; box: [79 - 80, 20, 79 - 60, 60] -> clamped [0, 20, 19, 59]
    assert out.tolist() == [[1, 0, 79, 58], [0, 20, 19, 59]]


def test_whole_image_geometry_embedding():
    """The geometry the model sees for the whole image of a 40 x 30 image resized to 80 x 60:
    box [0, 0, 78, 58] -> (xc, yc, w, h) / size x 100 = (48.75, 48.333.., 97.5, 96.666..)."""
    from vlbert_d2.data.common import resize_image_and_boxes, whole_image_box
    from vlbert_d2.modeling.visual import geometry_embedding

    _, out, _, _ = resize_image_and_boxes([T.ResizeShortestEdge(60, 1000, "choice")], np.zeros((30, 40, 3), np.uint8),
                                          np.array([whole_image_box(40, 30)], np.float32))
    g = geometry_embedding(out, torch.tensor([[60.0, 80.0]]), dim=2048)[0].double()
    # Frequency 0 of each coordinate (wave length 1000 ** 0 = 1): sin at 0, cos at 256, per 512.
    for k, value in enumerate([48.75, 29 / 60 * 100, 97.5, 58 / 60 * 100]):
        assert g[512 * k].item() == pytest.approx(math.sin(value), abs=2e-5)
        assert g[512 * k + 256].item() == pytest.approx(math.cos(value), abs=2e-5)


def _detection(path, w, h, boxes, classes=None, features=None):
    from vlbert_d2.data.detections import encode_detection, write_detection

    write_detection(str(path), encode_detection(0, w, h, boxes, features, classes))
    return str(path)


def test_vqa_precomputed_boxes_are_resized_and_clamped_like_the_image(tmp_path):
    """Official precomputed VQA: the boxes go through the resize (image_size: the resized one)
    and the clamp. 100 x 80 -> short side 128: x1.6 -> 160 x 128."""
    from vlbert_d2.data.vqa_mapper import VQADatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    path = _detection(tmp_path / "d.json", 100, 80, [[50, 10, 90, 60], [60, 40, 100, 80]],
                      features=np.ones((2, 3), np.float32))
    m = VQADatasetMapper(False, tokenizer=build_tokenizer(make_cfg()), image_format="BGR", max_text_len=16,
                         augmentations=[T.ResizeShortestEdge(128, 1000, "choice")], answer_vocab=["yes"],
                         detection_features=True)
    out = m({"detection_file": path, "file_name": "/no/image.jpg", "question": "what?", "question_id": 1,
             "image_id": 0, "source": "q:1"})
    assert out["image_size"] == (128, 160) and (out["height"], out["width"]) == (80, 100)
    # whole [0, 0, 99, 79] x1.6; [60, 40, 100, 80] x1.6 = [96, 64, 160, 128] -> clamp [.., 159, 127]
    torch.testing.assert_close(out["boxes"], torch.tensor([[0, 0, 158.4, 126.4], [80, 16, 144, 96],
                                                           [96, 64, 159, 127]]))


def test_pretrain_caption_boxes(tmp_path):
    """Pre-training (Conceptual Captions): the whole image first as [0, 0, w - 1, h - 1], then
    the detections (best first), resized and clamped (precomputed mode: no pixels needed)."""
    from vlbert_d2.data import PretrainDatasetMapper

    classes = np.array([[0.1, 0.9, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0]], np.float32)
    path = _detection(tmp_path / "c.json", 100, 80, [[50, 10, 90, 60], [0, 0, 100, 80]], classes=classes,
                      features=np.ones((2, 2048), np.float32))
    cfg = pretrain_cfg("MODEL.VLBERT.DETECTION_FEATURES", "True", "MODEL.VLBERT.PRETRAIN.MVRC_PROB", "0.0")
    out = PretrainDatasetMapper(cfg, is_train=False)({"detection_file": path, "file_name": "/no.jpg",
                                                      "caption": "a ball", "image_id": 0, "source": "t:1"})
    # Tiny config: test short side 128 -> x1.6 -> 160 x 128.
    assert out["image_size"] == (128, 160)
    torch.testing.assert_close(out["boxes"], torch.tensor([[0, 0, 158.4, 126.4], [80, 16, 144, 96],
                                                           [0, 0, 159, 127]]))


def test_pretrain_caption_whole_image_end_to_end(tmp_path):
    from vlbert_d2.data import PretrainDatasetMapper

    cv2.imwrite(str(tmp_path / "img.png"), np.full((80, 100, 3), 90, np.uint8))
    path = _detection(tmp_path / "c.json", 100, 80, [[50, 10, 90, 60]], classes=np.array([[0.1, 0.9, 0, 0]]))
    cfg = pretrain_cfg("MODEL.VLBERT.PRETRAIN.MVRC_PROB", "0.0", "INPUT.RANDOM_FLIP", "none")
    out = PretrainDatasetMapper(cfg, is_train=False)({"detection_file": path, "file_name": str(tmp_path / "img.png"),
                                                      "caption": "a ball", "image_id": 0, "source": "t:1"})
    assert tuple(out["image"].shape) == (3, 128, 160)
    torch.testing.assert_close(out["boxes"], torch.tensor([[0, 0, 158.4, 126.4], [80, 16, 144, 96]]))


def _refcoco_record(tmp_path):
    cv2.imwrite(str(tmp_path / "img.png"), np.full((30, 40, 3), 90, np.uint8))
    return {"file_name": str(tmp_path / "img.png"), "width": 40, "height": 30, "boxes": [[10, 5, 30, 25]],
            "gt_box": [10, 5, 30, 25], "sentence": "the one", "source": "refs:1", "ref_id": 1, "sent_id": 2,
            "image_id": 3}


def test_refcoco_boxes_labels_and_candidates(tmp_path):
    from vlbert_d2.data.refcoco_mapper import RefCOCODatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    d = _refcoco_record(tmp_path)
    tok = build_tokenizer(make_cfg())
    up = RefCOCODatasetMapper(False, tokenizer=tok, augmentations=[T.ResizeShortestEdge(60, 1000, "choice")],
                              image_format="BGR", max_text_len=16)(d)
    assert up["boxes"].tolist() == [[0, 0, 78, 58], [20, 10, 60, 50]]
    assert up["region_labels"].tolist() == [0, 1]
    # The official prediction is the resized, clamped box / ratio: here no clamp bites.
    assert up["candidate_boxes"].tolist() == [[0, 0, 39, 29], [10, 5, 30, 25]]
    # Downscaled x0.5 to 20 x 15: whole [0, 0, 19.5, 14.5] -> clamp [0, 0, 19, 14]; back in the
    # original pixels the bound is (20 - 1) / 0.5 = 38 and (15 - 1) / 0.5 = 28.
    down = RefCOCODatasetMapper(False, tokenizer=tok, augmentations=[T.ResizeShortestEdge(15, 1000, "choice")],
                                image_format="BGR", max_text_len=16)(d)
    assert down["boxes"].tolist() == [[0, 0, 19, 14], [5, 2.5, 15, 12.5]]
    assert down["candidate_boxes"].tolist() == [[0, 0, 38, 28], [10, 5, 30, 25]]


# ---------------------------------------------------------------------------------------------
# Item 8: the text corpus stays on disk; evaluation on a bounded, fixed sample


def _corpus(path, n):
    """``n`` samples of exactly 4 words each (min_words=4), with blank lines between some."""
    lines = []
    for i in range(n):
        lines.append(f"s{i} alpha beta")
        lines.append("" if i % 3 == 0 else " ")
        lines.append("gamma")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_corpus_records_point_into_the_file_and_the_index_is_memory_mapped(tmp_path):
    from vlbert_d2.data.datasets.pretrain import TextCorpus, read_corpus_sample

    corpus = TextCorpus([_corpus(tmp_path / "a.txt", 10), _corpus(tmp_path / "b.txt", 5)], min_words=4)
    assert len(corpus) == 15
    assert all(isinstance(x, np.memmap) for x in corpus._index)
    r = corpus[11]  # sample 1 of b.txt, which starts on line 4
    assert set(r) == {"text_file", "text_offset", "text_bytes", "source"}
    assert r["source"] == f"{tmp_path / 'b.txt'}:4" and read_corpus_sample(r) == "s1 alpha beta gamma"
    assert read_corpus_sample(corpus[-1]) == "s4 alpha beta gamma"
    with pytest.raises(IndexError):
        corpus[15]


def test_evaluation_sample_is_bounded_and_fixed(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.data import PretrainDatasetMapper
    from vlbert_d2.data.datasets.pretrain import TextCorpus, read_corpus_sample, register_text_corpus

    _corpus(tmp_path / "c.txt", 10)
    corpus = TextCorpus([str(tmp_path / "c.txt")], min_words=4)
    # N = 10, 3 samples: (2k + 1) * 10 // 6 for k = 0, 1, 2 -> samples 1, 5, 8.
    assert [read_corpus_sample(x) for x in corpus.sample(3)] == [f"s{i} alpha beta gamma" for i in (1, 5, 8)]
    assert len(corpus.sample(0)) == len(corpus.sample(50)) == 10
    # Through the config key: the mapper built for evaluation bounds the test corpus.
    name = "pytest_fidelity_corpus_val"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_text_corpus(name, str(tmp_path), ["c.txt"], min_words=4)
    cfg = pretrain_cfg("DATASETS.TEST", f"('{name}',)", "MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES", "3")
    from vlbert_d2.data.test_loader import build_vlbert_test_loader

    def evaluated(cfg):  # what the trainer's evaluation iterates over: the sample, mapped
        loader = build_vlbert_test_loader(cfg, name, PretrainDatasetMapper(cfg, is_train=False))
        return [x["source"] for batch in loader for x in batch]

    first = evaluated(cfg)
    assert first == [f"{tmp_path / 'c.txt'}:{line}" for line in (4, 16, 25)]  # samples 1, 5, 8: lines 3i + 1
    # The same sample every time, also after the cached index is rebuilt.
    from vlbert_d2.data.datasets.pretrain import index_cache_dir

    for f in os.listdir(index_cache_dir()):
        if f.startswith("c.txt."):
            os.remove(os.path.join(index_cache_dir(), f))
    assert evaluated(cfg) == first
    from vlbert_d2.engine.trainer import VLBertTrainer

    assert [x["source"] for batch in VLBertTrainer.build_test_loader(cfg, name) for x in batch] == first
    assert len(DatasetCatalog.get(name)) == 10  # the registered dataset is the whole corpus
    cfg = pretrain_cfg("DATASETS.TEST", f"('{name}',)", "MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES", "0")
    assert len(evaluated(cfg)) == 10  # 0: all


def test_corpus_index_cache_follows_the_file(tmp_path):
    from vlbert_d2.data.datasets.pretrain import TextCorpus, read_corpus_sample

    path = _corpus(tmp_path / "c.txt", 4)
    assert len(TextCorpus([path], min_words=4)) == 4
    _corpus(tmp_path / "c.txt", 6)  # rewritten: size and mtime change, the index is rebuilt
    corpus = TextCorpus([path], min_words=4)
    assert len(corpus) == 6 and read_corpus_sample(corpus[5]) == "s5 alpha beta gamma"
