"""VL-BERT's input embedding: geometry embedding, sequence layout, zero-init visual LayerNorms
(text-only outputs equal the pretrained BERT's), and where BERT weights come from."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from conftest import MINILM, REPO, make_cfg
from vlbert_d2.modeling.bert import (
    PretrainedNotFoundError,
    build_bert,
    build_tokenizer,
    resolve_pretrained,
)
from vlbert_d2.modeling.visual import geometry_embedding
from vlbert_d2.modeling.vl_bert import VISUAL_SEGMENT, VisualLinguisticBert


# --------------------------------------------------------------------------- geometry embedding
def _geometry_reference(box, height, width, dim, wave_length=1000.0):
    """Straight from the definition, one number at a time."""
    x1, y1, x2, y2 = box
    coords = [(x1 + x2) / 2 / width * 100, (y1 + y2) / 2 / height * 100,
              (x2 - x1) / width * 100, (y2 - y1) / height * 100]
    n = dim // 8
    out = []
    for c in coords:  # coordinate-major: [sin(c) over freqs | cos(c) over freqs] per coordinate
        out += [math.sin(c / wave_length ** (i / n)) for i in range(n)]
        out += [math.cos(c / wave_length ** (i / n)) for i in range(n)]
    return out


@pytest.mark.parametrize("dim", [2048, 64])
def test_geometry_embedding_matches_definition(dim):
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 192.0, 128.0], [3.5, 7.0, 4.5, 120.0]],
                         dtype=torch.float64)
    sizes = torch.tensor([[128, 192], [128, 192], [300, 40]])  # (height, width) per box
    got = geometry_embedding(boxes, sizes, dim=dim)
    assert got.shape == (3, dim)
    for k in range(3):
        ref = torch.tensor(_geometry_reference(boxes[k].tolist(), *sizes[k].tolist(), dim),
                           dtype=torch.float64)
        torch.testing.assert_close(got[k], ref, rtol=0, atol=1e-9)


def test_geometry_embedding_wave_length_and_paper_layout():
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]], dtype=torch.float64)
    size = torch.tensor([[100, 200]])
    got = geometry_embedding(box, size, dim=16, wave_length=10.0)
    torch.testing.assert_close(got[0], torch.tensor(_geometry_reference(box[0].tolist(), 100, 200, 16, 10.0),
                                                    dtype=torch.float64), rtol=0, atol=1e-9)
    # Paper: 2048-d = 4 coordinates x (sin, cos) x 256 frequencies; the first frequency is 1,
    # so entry 0 is sin(xc) and entry 256 is cos(xc); entry 512 is sin(yc).
    g = geometry_embedding(box, size, dim=2048)[0]
    xc, yc = 30 / 200 * 100, 50 / 100 * 100
    assert g[0].item() == pytest.approx(math.sin(xc))
    assert g[256].item() == pytest.approx(math.cos(xc))
    assert g[512].item() == pytest.approx(math.sin(yc))
    assert g[255].item() == pytest.approx(math.sin(xc / 1000 ** (255 / 256)))


@pytest.mark.parametrize("dim", [12, 100, 2047])
def test_geometry_embedding_rejects_dim_not_multiple_of_8(dim):
    with pytest.raises(ValueError, match="multiple of 8"):
        geometry_embedding(torch.zeros((1, 4)), torch.ones((1, 2)), dim=dim)


# --------------------------------------------------------------------------- sequence layout
def _small_bert(type_vocab_size=3):
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=type_vocab_size)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=True).eval()


def _capture_bert_inputs(vl):
    captured = {}

    def hook(module, args, kwargs):
        assert not args, "VisualLinguisticBert should call BERT with keyword arguments"
        captured.update(kwargs)

    vl.bert.register_forward_pre_hook(hook, with_kwargs=True)
    return captured


def _layout_inputs(H=32):
    torch.manual_seed(1)
    input_ids = torch.tensor([[2, 5, 6, 3, 7], [2, 8, 3, 0, 0]])  # real lengths 5 and 3
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]])
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    text_visual = torch.randn(2, 5, H)
    object_visual = torch.randn(2, 3, H)
    object_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return input_ids, token_type_ids, text_mask, text_visual, object_visual, object_mask


def test_input_layout_text_rois_end():
    vl = VisualLinguisticBert(_small_bert()).eval()
    H, eps = 32, vl.bert.config.layer_norm_eps
    with torch.no_grad():  # non-zero LayerNorms, so the visual features show in the embeddings
        for ln in (vl.visual_ln_text, vl.visual_ln_object):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    captured = _capture_bert_inputs(vl)
    ids, types, tmask, tvis, ovis, omask = _layout_inputs(H)
    S, L, N = 2, 5, 3
    with torch.no_grad():
        out = vl(ids, types, tmask, tvis, ovis, omask)

    emb, tt, pos, mask = (captured[k] for k in ("inputs_embeds", "token_type_ids", "position_ids",
                                                "attention_mask"))
    assert emb.shape == (S, L + N + 1, H)
    # Segments: text keeps its A/B types; every RoI and [END] is segment C (2).
    assert torch.equal(tt[:, :L], types)
    assert (tt[:, L:] == VISUAL_SEGMENT).all() and VISUAL_SEGMENT == 2
    # Positions: text 0..L-1; all RoIs share the position right after the real text; END next.
    assert torch.equal(pos[:, :L], torch.arange(L).expand(S, L))
    assert torch.equal(pos[:, L:L + N], torch.tensor([[5, 5, 5], [3, 3, 3]]))
    assert torch.equal(pos[:, L + N], torch.tensor([6, 4]))
    # Attention: real text | real RoIs | END always.
    assert torch.equal(mask.long(), torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1],
                                                  [1, 1, 1, 0, 0, 1, 1, 0, 1]]))
    assert torch.equal(out.attention_mask.long(), mask.long())
    # Embeddings: word + LN_text(visual) for text; [IMG] + LN_object(visual) for RoIs; [END].
    def ln(x, m):
        return F.layer_norm(x, (H,), m.weight, m.bias, eps)

    with torch.no_grad():
        word = vl.bert.embeddings.word_embeddings(ids)
        torch.testing.assert_close(emb[:, :L], word + ln(tvis, vl.visual_ln_text))
        torch.testing.assert_close(emb[:, L:L + N], vl.img_embedding + ln(ovis, vl.visual_ln_object))
        torch.testing.assert_close(emb[:, L + N], vl.end_embedding.expand(S, H))
    # Outputs are split back into the text and RoI slots.
    assert out.text.shape == (S, L, H) and out.objects.shape == (S, N, H)
    assert out.pooled.shape == (S, H)


def test_input_layout_text_only_and_default_object_mask():
    vl = VisualLinguisticBert(_small_bert()).eval()
    captured = _capture_bert_inputs(vl)
    ids, types, tmask, tvis, ovis, _ = _layout_inputs()
    with torch.no_grad():
        out = vl(ids, types, tmask, tvis)
    assert captured["inputs_embeds"].shape[1] == 5  # no [IMG] / [END] element
    assert torch.equal(captured["token_type_ids"], types)
    assert torch.equal(captured["position_ids"], torch.arange(5).expand(2, 5))
    assert torch.equal(captured["attention_mask"].long(), tmask)
    assert out.objects is None and out.text.shape == (2, 5, 32)
    with torch.no_grad():
        vl(ids, types, tmask, tvis, ovis)  # object_mask None: every RoI is real
    assert torch.equal(captured["attention_mask"][:, 5:].long(), torch.ones((2, 4), dtype=torch.long))


def test_padding_does_not_leak_into_real_outputs():
    vl = VisualLinguisticBert(_small_bert(), visual_ln_init=1.0).eval()
    ids, types, tmask, tvis, ovis, omask = _layout_inputs()
    with torch.no_grad():
        a = vl(ids, types, tmask, tvis, ovis, omask)
        ids2, tvis2, ovis2 = ids.clone(), tvis.clone(), ovis.clone()
        ids2[1, 3:] = 9  # padded text slots of sequence 1
        # (random replacements: a constant shift would vanish in the LayerNorms)
        tvis2[1, 3:] = torch.randn(2, 32) * 5
        ovis2[1, 2] = torch.randn(32) * 5  # its masked RoI
        b = vl(ids2, types, tmask, tvis2, ovis2, omask)
    torch.testing.assert_close(a.text[0], b.text[0])
    torch.testing.assert_close(a.text[1, :3], b.text[1, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.objects[1, :2], b.objects[1, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-5, atol=1e-5)
    # ... while a real RoI does change them.
    with torch.no_grad():
        ovis3 = ovis.clone()
        ovis3[1, 1] = torch.randn(32) * 5
        c = vl(ids, types, tmask, tvis, ovis3, omask)
    assert (a.text[1, :3] - c.text[1, :3]).abs().max() > 1e-3


def test_needs_three_token_types():
    with pytest.raises(ValueError, match="segment"):
        VisualLinguisticBert(_small_bert(type_vocab_size=2))


# --------------------------------------------------------------------------- real pretrained BERT
@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    """(VL-BERT around MiniLM grown to 3 segments, the plain transformers MiniLM)."""
    cfg = make_cfg(MODEL__VLBERT__BERT_NAME=MINILM, MODEL__VLBERT__NUM_LAYERS=0)
    bert = build_bert(cfg, vocab_size=0)
    vl = VisualLinguisticBert(bert).eval()  # default: the official zero init
    ref = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    return vl, ref


def test_visual_layernorms_start_at_zero():
    vl = VisualLinguisticBert(_small_bert())
    for m in (vl.visual_ln_text, vl.visual_ln_object):
        assert torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    assert cfg.MODEL.VLBERT.VISUAL_LN_INIT == 0.0
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    assert cfg.MODEL.VLBERT.VISUAL_LN_INIT == 0.0 and cfg.MODEL.VLBERT.VCR.LOSS == "bce"


def test_build_bert_grows_pretrained_token_types(minilm_pair):
    vl, ref = minilm_pair
    bert = vl.bert
    assert bert.config.num_hidden_layers == 6 and len(bert.encoder.layer) == 6  # NUM_LAYERS 0: all
    types = bert.embeddings.token_type_embeddings.weight
    assert types.shape == (3, 384) and bert.config.type_vocab_size == 3
    torch.testing.assert_close(types[:2], ref.embeddings.token_type_embeddings.weight, rtol=0, atol=0)
    assert types[2].abs().sum() > 0  # the new visual segment is initialised, not zero
    torch.testing.assert_close(bert.embeddings.word_embeddings.weight,
                               ref.embeddings.word_embeddings.weight, rtol=0, atol=0)


def test_text_only_outputs_equal_pretrained_bert(minilm_pair, tokenizer):
    vl, ref = minilm_pair
    enc = tokenizer(["a person is holding an umbrella .", "why is it raining ?"],
                    ["because it is cloudy", "it is not"], padding=True, return_tensors="pt")
    S, L = enc["input_ids"].shape
    assert (enc["token_type_ids"] == 1).any() and (enc["attention_mask"] == 0).any()
    torch.manual_seed(0)
    text_visual = torch.randn(S, L, 384) * 3.0  # arbitrary: the zero-weight LayerNorm hides it
    with torch.no_grad():
        want = ref(**enc)
        got = vl(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], text_visual)
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(got.text[real], want.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.pooled, want.pooler_output, rtol=0, atol=1e-5)

    # With RoIs in the sequence, the text tokens attend to them: outputs differ.
    with torch.no_grad():
        with_rois = vl(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], text_visual,
                       torch.randn(S, 3, 384), torch.ones((S, 3)))
    assert (with_rois.text[real] - want.last_hidden_state[real]).abs().max() > 1e-3

    # And the text-side visual feature is not ignored once its LayerNorm is opened.
    ln = vl.visual_ln_text
    saved = ln.weight.detach().clone()
    try:
        with torch.no_grad():
            ln.weight.fill_(1.0)
            opened = vl(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], text_visual)
    finally:
        with torch.no_grad():
            ln.weight.copy_(saved)
    assert (opened.text[real] - want.last_hidden_state[real]).abs().max() > 1e-3


def test_build_bert_keeps_first_layers(minilm_dir):
    bert = build_bert(make_cfg(MODEL__VLBERT__BERT_NAME=MINILM, MODEL__VLBERT__NUM_LAYERS=2), 0)
    assert len(bert.encoder.layer) == 2 and bert.config.num_hidden_layers == 2
    assert bert.config._attn_implementation == "sdpa"  # MODEL.VLBERT.ATTENTION_IMPL's default


# --------------------------------------------------------------------------- resolve_pretrained
def test_resolve_pretrained_package():
    path = resolve_pretrained(MINILM)
    assert os.path.isdir(path) and os.path.isfile(os.path.join(path, "vocab.txt"))
    assert os.path.isfile(os.path.join(path, "config.json"))
    # Other forms pass through unchanged.
    assert resolve_pretrained("bert-base-uncased") == "bert-base-uncased"
    assert resolve_pretrained(path) == path


def test_resolve_pretrained_missing_package():
    with pytest.raises(PretrainedNotFoundError, match="no_such_pkg_xyz") as info:
        resolve_pretrained("pkg:no_such_pkg_xyz")
    assert isinstance(info.value, OSError)


def test_tokenizer_from_package_is_bert_uncased():
    tok = build_tokenizer(make_cfg(MODEL__VLBERT__BERT_NAME=MINILM))
    assert len(tok) == 30522
    assert tok.tokenize("Casey") == ["casey"]


def _go_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_name_offline_tokenizer_raises_helpful_error(monkeypatch):
    _go_offline(monkeypatch)
    cfg = make_cfg(MODEL__VLBERT__BERT_NAME="no-such-org/no-such-model")
    with pytest.raises(PretrainedNotFoundError, match="local directory") as info:
        build_tokenizer(cfg)
    assert "no-such-org/no-such-model" in str(info.value)


def test_hub_name_offline_bert_raises_helpful_error(monkeypatch):
    _go_offline(monkeypatch)
    cfg = make_cfg(MODEL__VLBERT__BERT_NAME="no-such-org/no-such-model")
    with pytest.raises(PretrainedNotFoundError, match="local directory") as info:
        build_bert(cfg, vocab_size=0)
    assert "no-such-org/no-such-model" in str(info.value)


def test_tokenizer_from_directory_without_vocab_raises(tmp_path):
    # An existing directory that holds no tokenizer files must not give an empty vocabulary.
    cfg = make_cfg(MODEL__VLBERT__BERT_NAME=MINILM, MODEL__VLBERT__TOKENIZER=str(tmp_path))
    with pytest.raises(OSError):
        build_tokenizer(cfg)


def test_num_layers_larger_than_the_checkpoint_raises():
    cfg = make_cfg(MODEL__VLBERT__BERT_NAME=MINILM, MODEL__VLBERT__NUM_LAYERS=8)
    with pytest.raises(ValueError, match="has only 6 layers"):
        build_bert(cfg, vocab_size=0)


# --------------------------------------------------------------------------- frozen word embeddings
def _frozen_words_config():
    """A BERT config whose vocabulary reaches past the 1,000 special ids."""
    return BertConfig(vocab_size=1200, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=16, type_vocab_size=3)


def test_frozen_word_embeddings_keep_special_tokens_trainable_by_hand():
    # The official word_embedding_frozen: ids below 1,000 (BERT's [PAD], [unused*], [CLS],
    # [SEP], [MASK]) are looked up in a trainable copy, every other id in the frozen table.
    config = _frozen_words_config()
    torch.manual_seed(0)
    vl = VisualLinguisticBert(BertModel(config), word_embedding_frozen=True)
    table = vl.word_embeddings.weight
    assert not table.requires_grad and vl.special_word_embeddings.weight.shape == (1000, 8)
    torch.testing.assert_close(vl.special_word_embeddings.weight, table[:1000], rtol=0, atol=0)
    with torch.no_grad():
        vl.special_word_embeddings.weight[101] = 1.0  # [CLS] moves away from the table's row
    ids = torch.tensor([[101, 1100, 999, 1000]])
    got = vl.embed_words(ids)
    torch.testing.assert_close(got[0, 0], torch.ones(8), rtol=0, atol=0)
    torch.testing.assert_close(got[0, 1], table[1100], rtol=0, atol=0)
    torch.testing.assert_close(got[0, 2], vl.special_word_embeddings.weight[999], rtol=0, atol=0)
    torch.testing.assert_close(got[0, 3], table[1000], rtol=0, atol=0)
    got.sum().backward()
    assert table.grad is None
    grad = vl.special_word_embeddings.weight.grad
    assert set(torch.nonzero(grad.abs().sum(1)).flatten().tolist()) == {101, 999}


def test_frozen_word_embeddings_load_a_checkpoint_without_the_copy():
    # A checkpoint trained with every word embedding trainable (BERT's, a pre-trained VL-BERT)
    # has no special_word_embeddings: they come from its table, not from the replaced weights.
    config = _frozen_words_config()
    torch.manual_seed(0)
    trained = VisualLinguisticBert(BertModel(config))
    state = trained.state_dict()
    state["bert.embeddings.word_embeddings.weight"] = torch.randn(1200, 8)
    frozen = VisualLinguisticBert(BertModel(config), word_embedding_frozen=True)
    result = frozen.load_state_dict(state, strict=True)  # nothing missing: the hook filled it
    assert not result.missing_keys
    torch.testing.assert_close(frozen.special_word_embeddings.weight,
                               state["bert.embeddings.word_embeddings.weight"][:1000], rtol=0, atol=0)
    # Its own checkpoint keeps its trained copy.
    with torch.no_grad():
        frozen.special_word_embeddings.weight.zero_()
    again = VisualLinguisticBert(BertModel(config), word_embedding_frozen=True)
    again.load_state_dict(frozen.state_dict())
    assert again.special_word_embeddings.weight.abs().sum() == 0


def test_frozen_word_embeddings_draw_no_random_numbers():
    # The option must not shift the random stream: the layers built after VL-BERT's embedding
    # and the dropout masks are those of the model without it (else comparing the two compares
    # two initialisations too).
    config = _frozen_words_config()
    after = []
    for frozen in (False, True):
        bert = BertModel(config)
        torch.manual_seed(0)
        VisualLinguisticBert(bert, word_embedding_frozen=frozen)
        after.append(torch.randn(4))
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=0)


def test_checkpoint_with_frozen_word_embeddings_loads_into_a_model_that_trains_them():
    # The copy's rows replace the table's first rows: the model computes what the checkpoint's did
    # (not the table's stale rows for [CLS], [SEP], [MASK]).
    config = _frozen_words_config()
    torch.manual_seed(0)
    frozen = VisualLinguisticBert(BertModel(config), word_embedding_frozen=True)
    with torch.no_grad():
        frozen.special_word_embeddings.weight.normal_()
    plain = VisualLinguisticBert(BertModel(config))
    result = plain.load_state_dict(frozen.state_dict(), strict=True)
    assert not result.unexpected_keys
    ids = torch.tensor([[101, 5, 1100, 102]])
    torch.testing.assert_close(plain.embed_words(ids), frozen.embed_words(ids), rtol=0, atol=0)
    torch.testing.assert_close(plain.word_embeddings.weight[1000:], frozen.word_embeddings.weight[1000:],
                               rtol=0, atol=0)


def test_checkpoint_with_the_copy_but_no_word_table_is_refused_by_name():
    # A damaged or partial checkpoint: the special tokens' copy without the table it belongs to
    # cannot be folded into a model that trains every embedding; the error names both keys.
    config = _frozen_words_config()
    torch.manual_seed(0)
    state = VisualLinguisticBert(BertModel(config), word_embedding_frozen=True).state_dict()
    del state["bert.embeddings.word_embeddings.weight"]
    plain = VisualLinguisticBert(BertModel(config))
    with pytest.raises(KeyError, match="special_word_embeddings.weight.*bert.embeddings.word_embeddings.weight"
                                       ".*WORD_EMBEDDING_FROZEN True"):
        plain.load_state_dict(state, strict=False)
