"""Pre-training: Conceptual Captions and text-corpus loaders (folder and zip), whole-word and RoI
masking, pixel masking, the three losses, the 1:1 batch mix, the evaluator, a few iterations
through tools/train_net.py and loading the result into VQA / RefCOCO+ models."""
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import MINILM, REPO
from conftest import run

TINY_PRETRAIN = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticPretrain.yaml")
TINY_VQA = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVQA.yaml")
TINY_REF = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticRefCOCO+.yaml")
COMMON = ["MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1"]


@pytest.fixture(scope="module")
def captions_root(tmp_path_factory):
    from synthetic_vl import generate_captions

    root = tmp_path_factory.mktemp("datasets") / "synthetic_captions"
    generate_captions(str(root), counts={"train": 12, "val": 4}, seed=3)
    return root


def pretrain_cfg(**overrides):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(TINY_PRETRAIN)
    cfg.MODEL.VLBERT.NUM_LAYERS = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list([x for k, v in overrides.items() for x in (k.replace("__", "."), v)])
    return cfg


def mapper(cfg, is_train=True):
    from vlbert_d2.data import PretrainDatasetMapper

    return PretrainDatasetMapper(cfg, is_train=is_train)


# ---------------------------------------------------------------------------------------------
# Loaders


def test_caption_loader_reads_zip_members_and_extracted_folders(captions_root, tmp_path):
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    zipped = load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))
    assert len(zipped) == 12
    assert all(".zip@" in d["file_name"] and ".zip@" in d["detection_file"] for d in zipped)
    assert all(isinstance(d["caption"], str) and d["caption"] for d in zipped)

    # The official "non-zip mode": the archives extracted to folders of the same names.
    folder = tmp_path / "folder"
    shutil.copytree(captions_root, folder)
    for name in ("train_image", "train_frcnn"):
        with zipfile.ZipFile(folder / f"{name}.zip") as z:
            z.extractall(folder / name)
        os.remove(folder / f"{name}.zip")
    plain = load_conceptual_captions(str(folder / "train_frcnn.json"), str(folder))
    assert all(".zip@" not in d["file_name"] and os.path.isfile(d["file_name"]) for d in plain)

    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=0.0, MODEL__VLBERT__PRETRAIN__MLM_PROB=0.0)
    m = mapper(cfg, is_train=False)
    a, b = m(zipped[0]), m(plain[0])
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert a["image"].shape[0] == 3 and a["boxes"].shape[0] >= 3  # whole image + >= 2 objects


def test_zip_reading_does_not_load_the_archive_and_works_in_workers(captions_root):
    """Each worker opens its own handle and reads one member by seeking."""
    from torch.utils.data import DataLoader

    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions
    from vlbert_d2.utils.files import read_bytes

    dicts = load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))
    expected = [len(read_bytes(d["file_name"])) for d in dicts]
    loader = DataLoader([d["file_name"] for d in dicts], batch_size=None, num_workers=2,
                        collate_fn=lambda p: (os.getpid(), len(read_bytes(p))))
    got = list(loader)
    assert [n for _, n in got] == expected
    assert len({pid for pid, _ in got}) == 2 and os.getpid() not in {pid for pid, _ in got}
    member = dicts[0]["file_name"].split(".zip@/")[1]
    with zipfile.ZipFile(str(captions_root / "train_image.zip")) as z:
        assert z.getinfo(member).compress_type == zipfile.ZIP_STORED


def test_caption_loader_names_file_line_and_field(tmp_path):
    from vlbert_d2.data.datasets.pretrain import PretrainFormatError, load_conceptual_captions

    path = tmp_path / "train_frcnn.json"
    good = json.dumps({"image": "a.jpg", "caption": "a red ball", "frcnn": "a.json"})
    path.write_text(good + "\n{not json\n")
    with pytest.raises(PretrainFormatError, match=r"train_frcnn.json:2: malformed JSON"):
        load_conceptual_captions(str(path), str(tmp_path))
    path.write_text(good + "\n" + json.dumps({"image": "b.jpg", "caption": "x"}) + "\n")
    with pytest.raises(PretrainFormatError, match=r":2: missing field 'frcnn'"):
        load_conceptual_captions(str(path), str(tmp_path))
    path.write_text(json.dumps({"image": "b.jpg", "caption": "", "frcnn": "b.json"}) + "\n")
    with pytest.raises(PretrainFormatError, match=r":1: field 'caption'"):
        load_conceptual_captions(str(path), str(tmp_path))


def test_missing_detection_file_and_too_few_boxes_are_named(captions_root, tmp_path):
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions
    from vlbert_d2.data.detections import DetectionFormatError

    d = load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))[0]
    broken = dict(d, detection_file=str(captions_root / "train_frcnn.zip@/nope.json"))
    with pytest.raises(FileNotFoundError, match=r"detection file not found.*nope\.json"):
        mapper(pretrain_cfg())(broken)
    missing_image = dict(d, file_name=str(tmp_path / "gone.jpg"))
    with pytest.raises(FileNotFoundError, match=r"train_frcnn.json:1: field 'image'.*gone\.jpg"):
        mapper(pretrain_cfg())(missing_image)
    # The paper's minimum of 10 boxes: the synthetic scenes have at most 5.
    with pytest.raises(DetectionFormatError, match=r"nope|field 'num_boxes': \d boxes, fewer than the minimum"):
        mapper(pretrain_cfg(MODEL__VLBERT__PRETRAIN__MIN_BOXES=10))(d)


def test_box_selection_keeps_confident_boxes_within_min_and_max():
    from vlbert_d2.data.pretrain_mapper import select_boxes

    conf = np.array([0.3, 0.9, 0.6, 0.2, 0.95, 0.1])
    # Official: the highest value of each row (background column included) is the box's score.
    classes = np.stack([np.full_like(conf, 0.05), conf], 1)
    assert select_boxes(classes, 1, 10, 0.5, "f").tolist() == [4, 1, 2]  # >= 0.5, best first
    assert select_boxes(classes, 4, 10, 0.5, "f").tolist() == [4, 1, 2, 0]  # at least 4
    assert select_boxes(classes, 1, 2, 0.5, "f").tolist() == [4, 1]  # at most 2


def test_text_corpus_joins_lines_and_names_bad_bytes(tmp_path):
    from vlbert_d2.data.datasets.pretrain import PretrainFormatError, load_text_corpus, read_corpus_sample

    f = tmp_path / "corpus.txt"
    f.write_text("one two three\n\nfour five\nsix seven eight nine\nten\n")
    samples = load_text_corpus([str(f)], min_words=4)
    # The records point into the file; the text is read when a record is used.
    assert [read_corpus_sample(s) for s in samples] == ["one two three four five", "six seven eight nine", "ten"]
    assert samples[1]["source"].endswith("corpus.txt:4") and "text" not in samples[1]
    f.write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(PretrainFormatError, match=r"corpus.txt:2: not UTF-8"):
        load_text_corpus([str(f)])
    with pytest.raises(FileNotFoundError, match="text corpus file not found"):
        load_text_corpus([str(tmp_path / "missing.txt")])


def test_text_samples_are_cut_to_the_maximum_length(tokenizer):
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__TEXT_MAX_LEN=12, MODEL__VLBERT__PRETRAIN__MLM_PROB=0.0)
    out = mapper(cfg)({"text": " ".join(["word"] * 100), "source": "c.txt:1"})
    assert out["input_ids"].shape == (1, 12) and out["mlm_labels"].shape == (1, 12)
    # 12 word pieces, no [CLS] or [SEP] (official text-only input).
    assert out["input_ids"][0].tolist() == tokenizer.convert_tokens_to_ids(["word"] * 12)
    assert "boxes" not in out and out["pretrain_kind"] == "text"


# ---------------------------------------------------------------------------------------------
# Masking


def test_whole_word_masking_statistics():
    from vlbert_d2.data.pretrain_mapper import IGNORE, mask_whole_words

    rng = np.random.default_rng(0)
    num_words = 30000
    word_ids = [w for w in range(num_words) for _ in range(1 + w % 3)]  # 1 to 3 pieces per word
    pieces = [1000 + i % 500 for i in range(len(word_ids))]
    ids, labels = mask_whole_words(pieces, word_ids, rng, 0.15, 30522, mask_id=103)
    chosen = {}
    for i, w in enumerate(word_ids):
        chosen.setdefault(w, set()).add(labels[i] != IGNORE)
    assert all(len(v) == 1 for v in chosen.values())  # all pieces of a word, or none
    frac = np.mean([v == {True} for v in chosen.values()])
    assert abs(frac - 0.15) < 0.01
    labelled = [i for i, lab in enumerate(labels) if lab != IGNORE]
    assert all(labels[i] == pieces[i] for i in labelled)
    masked = np.mean([ids[i] == 103 for i in labelled])
    kept = np.mean([ids[i] == pieces[i] for i in labelled])
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # ~0.1 random (+ rare collisions)
    assert all(ids[i] == pieces[i] for i in range(len(ids)) if labels[i] == IGNORE)


def test_region_choice_never_takes_the_whole_image():
    from vlbert_d2.data.pretrain_mapper import choose_masked_regions

    rng = np.random.default_rng(1)
    chosen, masked = zip(*(choose_masked_regions(11, rng, 0.15) for _ in range(4000)))
    chosen, masked = np.stack(chosen), np.stack(masked)
    assert not chosen[:, 0].any() and not masked[:, 0].any()
    assert abs(chosen[:, 1:].mean() - 0.15) < 0.01
    assert (masked <= chosen).all() and abs(masked.sum() / chosen.sum() - 0.9) < 0.02


def test_pixel_masking_zeroes_the_regions_in_the_normalised_image():
    from vlbert_d2.data.pretrain_mapper import mask_region_pixels

    mean, std = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1), 2.0
    image = torch.full((3, 8, 10), 200, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 10, 8], [2.7, 1.2, 4.9, 3.0], [6, 5, 9, 7]])
    out = mask_region_pixels(image, boxes, [False, True, False], mean.flatten().tolist())
    normalised = (out - mean) / std
    region = torch.zeros(8, 10, dtype=torch.bool)
    region[1:4, 2:5] = True  # official rounding: int(y1):int(y2)+1, int(x1):int(x2)+1
    assert (normalised[:, region] == 0).all()
    assert (normalised[:, ~region] == ((200 - mean) / std).view(3, 1)).all()
    assert image.max() == 200  # the input is not modified


def test_mapper_masks_pixels_and_marks_targets(captions_root):
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    d = load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))[0]
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=1.0)  # every object chosen
    m = mapper(cfg, is_train=False)
    out = m(d)
    chosen = out["mvrc_targets"].sum(1) > 0
    assert not chosen[0] and chosen[1:].all()
    assert torch.allclose(out["mvrc_targets"][1:].sum(1), torch.ones(len(chosen) - 1))
    fill = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1)
    for box, is_masked in zip(out["boxes"][1:], out["mvrc_masked"][1:]):
        x1, y1, x2, y2 = (int(v) for v in box)
        patch = out["image"][:, y1:y2 + 1, x1:x2 + 1].reshape(3, -1)
        assert torch.equal(patch == fill, torch.ones_like(patch, dtype=torch.bool)) == bool(is_masked)
    assert out["mvrc_masked"][1:].any()
    # Evaluation masking is a function of the record: repeatable.
    again = m(d)
    assert torch.equal(again["input_ids"], out["input_ids"]) and torch.equal(again["mvrc_masked"], out["mvrc_masked"])


def _caption_with_attributes(captions_root, tmp_path, attributes=True, width=None):
    """The first training caption, its detection file rewritten with attribute distributions:
    box j's distribution is one-hot at j (``width`` entries), so a target row tells its box."""
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions
    from vlbert_d2.data.detections import encode_detection, read_detection, write_detection

    d = dict(load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))[0])
    det = read_detection(d["detection_file"])
    n = len(det["boxes"])
    attrs = np.eye(n, width or n, dtype=np.float32) if attributes else None
    path = str(tmp_path / "with_attributes.json")
    write_detection(path, encode_detection(1, det["image_w"], det["image_h"], det["boxes"],
                                           classes=det["classes"], attributes=attrs))
    d["detection_file"] = path
    return d, det


def test_mapper_gives_each_chosen_region_its_attribute_distribution(captions_root, tmp_path):
    d, det = _caption_with_attributes(captions_root, tmp_path)
    n = len(det["boxes"])
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=1.0, MODEL__VLBERT__PRETRAIN__NUM_REGION_ATTRIBUTES=n)
    out = mapper(cfg, is_train=False)(d)
    attr, classes = out["mvrc_attr_targets"], out["mvrc_targets"]
    assert attr.shape == (len(classes), n) and not attr[0].any()  # the whole image: no target
    rows = attr[1:].argmax(1)  # which box of the file each region is
    assert torch.equal(attr[1:], torch.eye(n)[rows])
    # The same box as the class target of that row.
    torch.testing.assert_close(classes[1:], torch.from_numpy(det["classes"])[rows])
    # Off by default: no attribute targets.
    assert "mvrc_attr_targets" not in mapper(pretrain_cfg(), is_train=False)(d)


def test_attribute_targets_missing_or_of_the_wrong_width_are_named(captions_root, tmp_path):
    from vlbert_d2.data.detections import DetectionFormatError

    d, det = _caption_with_attributes(captions_root, tmp_path, attributes=False)
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__NUM_REGION_ATTRIBUTES=7)
    with pytest.raises(DetectionFormatError, match=r"with_attributes.json: missing field 'attributes'.*=7"):
        mapper(cfg, is_train=False)(d)
    d, _ = _caption_with_attributes(captions_root, tmp_path, width=5)
    with pytest.raises(DetectionFormatError,
                       match=r"with_attributes.json: field 'attributes' has 5 entries per box, expected .*=7"):
        mapper(cfg, is_train=False)(d)


def test_detection_files_refuse_negative_attribute_probabilities(tmp_path):
    from vlbert_d2.data.detections import DetectionFormatError, encode_detection, read_detection, write_detection

    path = str(tmp_path / "bad.json")
    attrs = np.array([[0.5, 0.5], [1.2, -0.2]], dtype=np.float32)
    write_detection(path, encode_detection(1, 10, 10, [[0, 0, 5, 5], [1, 1, 4, 4]], attributes=attrs))
    with pytest.raises(DetectionFormatError, match=r"bad.json: field 'attributes': box 1 has a negative attribute"):
        read_detection(path)


# ---------------------------------------------------------------------------------------------
# Model: the three losses, the text-only path, MLM initialisation


def _head(with_rel=False, vocab=50, hidden=8, classes=4):
    from vlbert_d2.modeling.heads import PretrainHead

    torch.manual_seed(0)
    return PretrainHead(hidden_size=hidden, vocab_size=vocab, num_region_classes=classes, with_rel=with_rel)


def test_the_three_losses_on_tiny_inputs():
    from vlbert_d2.modeling.meta_arch import VLBertBatch
    from vlbert_d2.modeling.vl_bert import VLBertOutput

    head = _head(with_rel=True).train()
    emb = torch.randn(50, 8)
    text, objects, pooled = torch.randn(2, 5, 8), torch.randn(2, 3, 8), torch.randn(2, 8)
    mlm = [torch.tensor([[-1, 7, -1, -1, -1]]), torch.tensor([[-1, -1, 3, 9, -1]])]
    t0, t1 = torch.zeros(3, 4), torch.zeros(2, 4)
    t0[2] = torch.tensor([0.1, 0.6, 0.2, 0.1])
    t1[1] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    inputs = [{"mlm_labels": mlm[0], "mvrc_targets": t0, "rel_label": 1},
              {"mlm_labels": mlm[1], "mvrc_targets": t1, "rel_label": 0}]
    batch = VLBertBatch(num_choices=[1, 1], seq_to_input=torch.arange(2),
                        object_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), inputs=inputs, word_embeddings=emb)
    out = VLBertOutput(text=text, objects=objects, pooled=pooled, attention_mask=None)
    losses = head(out, batch)

    def mlm_logits(h):
        return F.linear(head.mlm_transform(h), emb, head.mlm_bias)

    hs = torch.stack([text[0, 1], text[1, 2], text[1, 3]])
    torch.testing.assert_close(losses["loss_mlm"], F.cross_entropy(mlm_logits(hs), torch.tensor([7, 3, 9])))
    logits = head.mvrc_classifier(head.mvrc_transform(torch.stack([objects[0, 2], objects[1, 1]])))
    target = torch.stack([t0[2], t1[1]])
    torch.testing.assert_close(losses["loss_mvrc"], -(target * logits.log_softmax(-1)).sum(-1).mean())
    torch.testing.assert_close(losses["loss_rel"], F.cross_entropy(head.rel_classifier(pooled), torch.tensor([1, 0])))
    # The decoder is the word-embedding matrix itself: its gradient reaches the embeddings.
    emb.requires_grad_(True)
    batch.word_embeddings = emb
    head(out, batch)["loss_mlm"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0

    # Text-only inputs: their own MLM loss, no RoI loss.
    batch.text_only = True
    text_losses = head(out, batch)
    assert set(text_losses) == {"loss_mlm_text"}
    torch.testing.assert_close(text_losses["loss_mlm_text"], losses["loss_mlm"])


def test_attribute_loss_and_accuracy_by_hand():
    """Attribute classifier set to the constant logits (0, ln 2, 0): softmax (1/4, 1/2, 1/4).
    Targets (0, 1, 0) and (1, 0, 0) on the two chosen RoIs: losses ln 2 and ln 4, mean 1.5 ln 2;
    the prediction (entry 1) is right for the first only."""
    import math

    from vlbert_d2.modeling.heads import PretrainHead
    from vlbert_d2.modeling.meta_arch import VLBertBatch
    from vlbert_d2.modeling.vl_bert import VLBertOutput

    torch.manual_seed(0)
    head = PretrainHead(hidden_size=8, vocab_size=50, num_region_classes=4, num_region_attributes=3)
    with torch.no_grad():
        head.mvrc_attr_classifier.weight.zero_()
        head.mvrc_attr_classifier.bias.copy_(torch.tensor([0.0, math.log(2), 0.0]))
    t0, t1 = torch.zeros(3, 4), torch.zeros(2, 4)
    t0[2, 1] = t1[1, 3] = 1.0
    a0, a1 = torch.zeros(3, 3), torch.zeros(2, 3)
    a0[2] = torch.tensor([0.0, 1.0, 0.0])
    a1[1] = torch.tensor([1.0, 0.0, 0.0])
    inputs = [{"mlm_labels": torch.tensor([[-1, 7, -1, -1, -1]]), "mvrc_targets": t0, "mvrc_attr_targets": a0},
              {"mlm_labels": torch.tensor([[-1, -1, 3, -1, -1]]), "mvrc_targets": t1, "mvrc_attr_targets": a1}]
    batch = VLBertBatch(num_choices=[1, 1], seq_to_input=torch.arange(2),
                        object_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), inputs=inputs,
                        word_embeddings=torch.randn(50, 8))
    out = VLBertOutput(text=torch.randn(2, 5, 8), objects=torch.randn(2, 3, 8), pooled=torch.randn(2, 8),
                       attention_mask=None)
    losses = head.train()(out, batch)
    assert set(losses) == {"loss_mlm", "loss_mvrc", "loss_mvrc_attr"}
    assert abs(losses["loss_mvrc_attr"].item() - 1.5 * math.log(2)) < 1e-6
    losses["loss_mvrc_attr"].backward()
    # d loss / d bias = mean of (softmax - target) = ((1/4, -1/2, 1/4) + (-3/4, 1/2, 1/4)) / 2
    torch.testing.assert_close(head.mvrc_attr_classifier.bias.grad, torch.tensor([-0.25, 0.0, 0.25]))
    counts = head.eval()(out, batch)
    assert [(c["mvrc_attr_correct"], c["mvrc_attr_total"]) for c in counts] == [(1, 1), (0, 1)]
    # Caption inputs without the targets: refused, naming the key.
    del inputs[1]["mvrc_attr_targets"]
    with pytest.raises(ValueError, match="NUM_REGION_ATTRIBUTES needs caption inputs with 'mvrc_attr_targets'"):
        head.train()(out, batch)


def test_text_only_inputs_use_one_learned_visual_vector_and_mix_with_captions(captions_root):
    from detectron2.modeling import build_model

    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    cfg = pretrain_cfg()
    model = build_model(cfg).eval()
    m = mapper(cfg, is_train=False)
    caption = m(load_conceptual_captions(str(captions_root / "val_frcnn.json"), str(captions_root))[0])
    text = m({"text": "there are three objects in the picture.", "source": "t:1"})
    with torch.no_grad():
        mixed = model([text, caption])
        alone = [model([text])[0], model([caption])[0]]
    assert mixed == alone and mixed[0]["kind"] == "text" and mixed[1]["kind"] == "caption"
    # The text-only visual embedding is the learned vector (through the text-side LayerNorm).
    with torch.no_grad():
        model.vl_bert.visual_ln_text.weight.fill_(1.0)
        before = model.encode_text_only([text])[0].text
        model.pretrain_embeddings.text_only_visual.add_(1.0)
        after = model.encode_text_only([text])[0].text
    assert not torch.allclose(before, after)
    model.train()
    losses = model([text, caption, text, caption])
    assert {"loss_mlm", "loss_mlm_text", "loss_mvrc"} <= set(losses)
    sum(losses.values()).backward()
    assert model.pretrain_embeddings.text_only_visual.grad is not None
    assert model.pretrain_embeddings.mask_token.grad is not None


def test_masked_rois_get_the_mask_token(captions_root):
    from detectron2.modeling import build_model

    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=1.0)
    model = build_model(cfg).eval()
    x = mapper(cfg, is_train=False)(load_conceptual_captions(str(captions_root / "val_frcnn.json"), str(captions_root))[1])
    seen = {}
    model.vl_bert.register_forward_hook(lambda mod, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model([x])
    tokens = seen["object_tokens"][0]
    for k, is_masked in enumerate(x["mvrc_masked"].tolist()):
        expected = model.pretrain_embeddings.mask_token if is_masked else model.vl_bert.img_embedding
        assert torch.equal(tokens[k], expected)


def test_mlm_head_starts_from_bert_cls_predictions(tmp_path):
    from transformers import BertConfig, BertForPreTraining

    from vlbert_d2.modeling.heads import PretrainHead

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    torch.manual_seed(0)
    bert = BertForPreTraining(config)
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()
    bert.save_pretrained(tmp_path)
    head = PretrainHead(hidden_size=16, vocab_size=40, num_region_classes=5, bert_name=str(tmp_path))
    p = bert.cls.predictions
    torch.testing.assert_close(head.mlm_transform[0].weight, p.transform.dense.weight)
    torch.testing.assert_close(head.mlm_transform[2].bias, p.transform.LayerNorm.bias)
    torch.testing.assert_close(head.mlm_bias, p.bias)
    # MiniLM (the tiny configs' BERT) ships no MLM head: random start, no error.
    PretrainHead(hidden_size=384, vocab_size=30522, num_region_classes=5, bert_name=MINILM)


# ---------------------------------------------------------------------------------------------
# Batches, evaluation, training, fine-tuning from the result


def test_mixed_loader_fills_every_batch_one_to_one(captions_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.data import build_vlbert_train_loader
    from vlbert_d2.data.datasets.pretrain import register_conceptual_captions, register_text_corpus

    for name in ("pytest_captions_train", "pytest_corpus_train"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_conceptual_captions("pytest_captions_train", str(captions_root), "train_frcnn.json")
    register_text_corpus("pytest_corpus_train", str(captions_root), ["corpus_train.txt"], min_words=8)
    cfg = pretrain_cfg(DATASETS__TRAIN=("pytest_captions_train", "pytest_corpus_train"), SOLVER__IMS_PER_BATCH=6)
    batches = iter(build_vlbert_train_loader(cfg, mapper(cfg)))
    for _ in range(3):
        kinds = [x["pretrain_kind"] for x in next(batches)]
        assert sorted(kinds) == ["caption"] * 3 + ["text"] * 3
    cfg = pretrain_cfg(DATASETS__TRAIN=("pytest_captions_train", "pytest_corpus_train"), SOLVER__IMS_PER_BATCH=5,
                       MODEL__VLBERT__PRETRAIN__TEXT_FRACTION=0.2)
    assert sorted(x["pretrain_kind"] for x in next(iter(build_vlbert_train_loader(cfg, mapper(cfg))))) == \
        ["caption"] * 4 + ["text"]


def test_pretrain_metrics_by_kind():
    from vlbert_d2.evaluation import pretrain_metrics

    counts = [{"kind": "caption", "mlm_correct": 1, "mlm_total": 4, "mvrc_correct": 2, "mvrc_total": 2},
              {"kind": "caption", "mlm_correct": 0, "mlm_total": 0, "mvrc_correct": 0, "mvrc_total": 2},
              {"kind": "text", "mlm_correct": 3, "mlm_total": 4}]
    assert pretrain_metrics(counts) == {"mlm_caption_acc": 25.0, "num_mlm_caption": 4.0,
                                        "mlm_text_acc": 75.0, "num_mlm_text": 4.0,
                                        "mvrc_acc": 50.0, "num_mvrc": 4.0}
    counts[0].update(mvrc_attr_correct=1, mvrc_attr_total=2)
    counts[1].update(mvrc_attr_correct=2, mvrc_attr_total=2)
    metrics = pretrain_metrics(counts)
    assert metrics["mvrc_attr_acc"] == 75.0 and metrics["num_mvrc_attr"] == 4.0


def _copypaste_tables(stdout):
    return re.findall(r"copypaste: (.*)", stdout)


def test_pretrain_iterations_then_fine_tune_from_the_checkpoint(captions_root, tmp_path):
    """A few pre-training iterations through tools/train_net.py; --eval-only on the checkpoint
    reports the same accuracies; the checkpoint loads into VQA and RefCOCO+ models, whose heads
    start from the MLM and masked-RoI transforms."""
    data_root = captions_root.parent
    out = tmp_path / "pretrain"
    # (MVRC_PROB 0.5 so that the 4 validation images surely have chosen RoIs to score.)
    opts = COMMON + ["SOLVER.IMS_PER_BATCH", "4", "MODEL.VLBERT.PRETRAIN.MVRC_PROB", "0.5"]
    train = run(["--config-file", TINY_PRETRAIN] + opts +
                ["SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", str(out)], data_root)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "loss_mlm_text" in train.stderr + train.stdout and "loss_mvrc" in train.stderr + train.stdout
    # (the training's evaluation ran at TEST.IMS_PER_BATCH 8, this one at 1: same accuracies)
    ev = run(["--config-file", TINY_PRETRAIN, "--eval-only", "TEST.IMS_PER_BATCH", "1"] + opts +
             ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")], data_root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    tables = _copypaste_tables(ev.stdout)
    assert tables == _copypaste_tables(train.stdout) and len(tables) == 6  # captions, then text
    caption_metrics = dict(zip(tables[1].split(","), map(float, tables[2].split(","))))
    assert {"mlm_caption_acc", "mvrc_acc"} <= set(caption_metrics)
    assert tables[4].split(",")[0] == "mlm_text_acc"

    weights = str(out / "model_final.pth")
    state = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    vocab = tmp_path / "answers.txt"
    vocab.write_text("yes\nno\n2\n3\n")
    vqa = _load_into(TINY_VQA, weights, ["MODEL.VLBERT.VQA.ANSWER_VOCAB", str(vocab)])
    for ours, theirs in (("0.weight", "0.weight"), ("2.bias", "2.bias")):
        torch.testing.assert_close(vqa.head.transform.state_dict()[ours], state["head.mlm_transform." + theirs])
    torch.testing.assert_close(vqa.vl_bert.bert.encoder.layer[0].output.dense.weight,
                               state["vl_bert.bert.encoder.layer.0.output.dense.weight"])
    ref = _load_into(TINY_REF, weights)
    torch.testing.assert_close(ref.head.transform[0].weight, state["head.mvrc_transform.0.weight"])


def _load_into(config, weights, extra=()):
    """Build a tiny model of ``config`` and load ``weights`` with the project's checkpointer."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.checkpoint import VLBertCheckpointer
    from vlbert_d2.config import finalize_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.VLBERT.NUM_LAYERS", "1", *extra])
    model = build_model(finalize_vlbert_config(cfg))
    VLBertCheckpointer(model).load(weights)
    return model


def test_relationship_task_pairs_half_the_images_with_other_captions(captions_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions, register_conceptual_captions

    if "pytest_captions_rel" in DatasetCatalog.list():
        DatasetCatalog.remove("pytest_captions_rel")
        MetadataCatalog.remove("pytest_captions_rel")
    register_conceptual_captions("pytest_captions_rel", str(captions_root), "train_frcnn.json")
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__WITH_REL=True, MODEL__VLBERT__PRETRAIN__MLM_PROB=0.0,
                       DATASETS__TRAIN=("pytest_captions_rel",), INPUT__RANDOM_FLIP="none")
    m = mapper(cfg)
    d = load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root))[0]
    own = m.tokenizer(d["caption"], add_special_tokens=False)["input_ids"]
    np.random.seed(0)
    outs = [m(d) for _ in range(40)]
    labels = [o["rel_label"] for o in outs]
    assert 10 < sum(labels) < 30
    for o, label in zip(outs, labels):
        assert (o["input_ids"][0, 1:-1].tolist() == own) == bool(label)
    # Off by default: no label, no relationship loss.
    assert "rel_label" not in mapper(pretrain_cfg())(d)


def test_precomputed_features_mask_rois_with_a_learned_vector(tmp_path):
    """DETECTION_FEATURES: masked RoIs' features become ``pretrain_embeddings.masked_feature``
    (zero at the start, as official) and the whole image's is the mean of the visible boxes."""
    from detectron2.modeling import build_model

    from vlbert_d2.data.detections import encode_detection, write_detection

    rng = np.random.default_rng(0)
    boxes = [[0, 0, 10, 10], [20, 20, 40, 40], [50, 10, 90, 60]]
    classes = np.array([[0.05, 0.9, 0.03, 0.02], [0.1, 0.1, 0.7, 0.1], [0.0, 0.0, 0.2, 0.8]])
    feats = rng.normal(size=(3, 2048)).astype(np.float32)
    write_detection(str(tmp_path / "frcnn" / "a.json"), encode_detection(0, 100, 80, boxes, feats, classes))
    d = {"file_name": str(tmp_path / "img.jpg"), "detection_file": str(tmp_path / "frcnn" / "a.json"),
         "caption": "a box and a ball", "image_id": 0, "source": "t.json:1"}
    cfg = pretrain_cfg(MODEL__VLBERT__DETECTION_FEATURES=True, MODEL__VLBERT__PRETRAIN__MVRC_PROB=1.0)
    out = mapper(cfg, is_train=False)(d)  # no image is read
    masked = out["mvrc_masked"]
    assert masked[1:].any() and not masked[0]
    order = np.argsort(-classes.max(1), kind="stable")
    visible = [feats[i] for k, i in enumerate(order) if not masked[k + 1]]
    expected_whole = np.mean(visible, 0) if visible else feats.mean(0)
    np.testing.assert_allclose(out["features"][0].numpy(), expected_whole, rtol=1e-5, atol=1e-6)

    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # 2048-d appearance features, as in the file
    model = build_model(cfg).eval()
    assert torch.equal(model.pretrain_embeddings.masked_feature, torch.zeros(2048))
    seen = {}
    model.fusion.register_forward_hook(lambda mod, args, o: seen.update(appearance=args[0]))
    with torch.no_grad():
        model.pretrain_embeddings.masked_feature.fill_(3.0)
        model([out])
    for k, is_masked in enumerate(masked.tolist()):
        expected = torch.full((2048,), 3.0) if is_masked else out["features"][k]
        assert torch.equal(seen["appearance"][k], expected)


def test_synthetic_captions_state_what_the_detections_show(captions_root, tmp_path):
    """Every caption's object count and side counts agree with its detection file; the same seed
    writes the same files."""
    from synthetic_vl import generate_captions
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions
    from vlbert_d2.data.detections import read_detection

    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "no": 0, "none": 0}
    for d in load_conceptual_captions(str(captions_root / "train_frcnn.json"), str(captions_root)):
        det = read_detection(d["detection_file"])
        n, w = len(det["boxes"]), det["image_w"]
        tokens = d["caption"].split()
        assert words[tokens[2]] == n and tokens[3].startswith("object")
        left = int(((det["boxes"][:, 0] + det["boxes"][:, 2]) / 2 < w / 2).sum())
        assert (words[tokens[7]], words[tokens[12]]) == (left, n - left)
        assert det["classes"].shape == (n, 4)
    again = tmp_path / "again"
    generate_captions(str(again), counts={"train": 12, "val": 4}, seed=3)
    for name in ("train_frcnn.json", "train_frcnn.zip", "train_image.zip", "corpus_train.txt"):
        assert (again / name).read_bytes() == (captions_root / name).read_bytes(), name


def test_caption_only_batches_keep_every_parameter_in_the_graph(captions_root):
    """Pre-training without text in a batch: every parameter still gets a gradient (zero for the
    text-only vector), as DistributedDataParallel requires."""
    from detectron2.modeling import build_model

    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=0.5)
    model = build_model(cfg).train()
    m = mapper(cfg, is_train=False)
    inputs = [m(d) for d in load_conceptual_captions(str(captions_root / "val_frcnn.json"), str(captions_root))]
    sum(model(inputs).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert torch.equal(model.pretrain_embeddings.text_only_visual.grad, torch.zeros_like(
        model.pretrain_embeddings.text_only_visual))


def test_evaluation_masks_do_not_depend_on_the_datasets_folder(captions_root, tmp_path):
    """The evaluation's fixed masks are a function of the record's file name and line, not of the
    folder: the same model evaluated on a copy of the dataset elsewhere (a fresh clone) scores the
    same. They were keyed on the absolute path, and a fresh clone's masked-RoI accuracy differed
    (74.00 against 79.28 for a bit-identical model)."""
    from vlbert_d2.data.datasets.pretrain import load_conceptual_captions

    elsewhere = tmp_path / "another" / "place"
    shutil.copytree(captions_root, elsewhere)
    cfg = pretrain_cfg(MODEL__VLBERT__PRETRAIN__MVRC_PROB=0.5, MODEL__VLBERT__PRETRAIN__MLM_PROB=0.5)
    m = mapper(cfg, is_train=False)
    here = load_conceptual_captions(str(captions_root / "val_frcnn.json"), str(captions_root))
    there = load_conceptual_captions(str(elsewhere / "val_frcnn.json"), str(elsewhere))
    assert here[0]["source"] != there[0]["source"]
    patterns = set()
    for a, b in zip(map(m, here), map(m, there)):
        for key in ("input_ids", "mlm_labels", "mvrc_masked", "mvrc_targets"):
            assert torch.equal(a[key], b[key]), key
        patterns.add((tuple(a["mlm_labels"][0].tolist()), tuple(a["mvrc_masked"].tolist())))
    assert len(patterns) > 1 and any(max(p[0]) >= 0 for p in patterns)  # masks drawn, and per record
    text = {"text": "the cat sat on the mat and the dog sat on the log"}
    a = m({**text, "source": "/a/corpus_val.txt:3"})
    b = m({**text, "source": "/elsewhere/b/corpus_val.txt:3"})
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["mlm_labels"], b["mlm_labels"])
