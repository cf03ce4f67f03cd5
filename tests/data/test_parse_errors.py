"""Hostile files against the readers: invalid UTF-8, integers beyond Python's int-string limit,
deep nesting and non-finite numbers in the JSON and text files, 16-bit and non-image files.

Every error names the file and the line (or the record and field); 16-bit images are rescaled
to 8 bits with a warning; 8-bit images read exactly as with detectron2's reader.
"""
import json
import logging
import os
import struct
import zipfile
import zlib
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron2.data import detection_utils as d2_utils
from detectron2.utils import logger as d2_logger

from vlbert_d2.data.common import read_image
from vlbert_d2.data.datasets.pretrain import PretrainFormatError, load_conceptual_captions
from vlbert_d2.data.datasets.vcr import VCRFormatError, load_vcr_jsonl
from vlbert_d2.data.datasets.vqa import VQAFormatError, load_answer_vocab, load_vqa
from vlbert_d2.data.detections import DetectionFormatError, read_detection

# --------------------------------------------------------------------------- JSON-lines files
VCR_LINE = {
    "objects": ["person"], "img_fn": "m/img.jpg", "metadata_fn": "m/img.json",
    "question": ["is", [0], "happy", "?"],
    "answer_choices": [["yes"], ["no"], ["maybe"], ["never"]],
    "rationale_choices": [["smiles"], ["cries"], ["sleeps"], ["runs"]],
    "answer_label": 0, "rationale_label": 1,
}


def _vcr_jsonl(tmp_path, bad_line):
    """train.jsonl: two good lines, then ``bad_line`` (bytes) as line 3; the images exist."""
    images = tmp_path / "vcr1images" / "m"
    images.mkdir(parents=True)
    (images / "img.jpg").write_bytes(b"")  # the loader only checks that the files exist
    (images / "img.json").write_bytes(b"")
    lines = [json.dumps(dict(VCR_LINE, annot_id=f"a-{i}")).encode() for i in range(2)] + [bad_line]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), str(tmp_path / "vcr1images")


def _vcr_line_with(raw_value):
    """A VCR line (bytes) whose ``question`` field holds ``raw_value`` written verbatim."""
    return json.dumps(dict(VCR_LINE, annot_id="a-2", question="@@")).encode().replace(b'"@@"', raw_value)


@pytest.mark.parametrize("raw, message", [
    (b'"caf\xe9"', r"train\.jsonl:3: invalid UTF-8 \(byte 0xe9 at column \d+"),  # Latin-1, not UTF-8
    (b"1" * 5000, r"train\.jsonl:3: malformed JSON \(Exceeds the limit \(4300 digits\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"train\.jsonl:3: malformed JSON \(nested too deeply"),
    (b"1e999", r"train\.jsonl:3: malformed JSON \(1e999 is out of the range of a float"),
    (b"NaN", r"train\.jsonl:3: malformed JSON \(NaN is not a finite number"),
    (b"-Infinity", r"train\.jsonl:3: malformed JSON \(-Infinity is not a finite number"),
])
def test_vcr_jsonl_names_file_and_line(tmp_path, raw, message):
    jsonl, image_root = _vcr_jsonl(tmp_path, _vcr_line_with(raw))
    with pytest.raises(VCRFormatError, match=message):
        load_vcr_jsonl(jsonl, image_root)


def test_caption_jsonl_names_file_and_line_of_a_non_finite_width(tmp_path):
    path = tmp_path / "train_frcnn.json"
    good = json.dumps({"image": "a.jpg", "caption": "a red ball", "frcnn": "a.json", "width": 640})
    path.write_text(good + "\n\n" + good.replace("640", "1e999") + "\n")  # line 2 blank (skipped)
    with pytest.raises(PretrainFormatError, match=r"train_frcnn\.json:3: malformed JSON \(1e999"):
        load_conceptual_captions(str(path), str(tmp_path))
    path.write_bytes(good.encode() + b"\n" + good.encode().replace(b"red", b"r\xffd") + b"\n")
    with pytest.raises(PretrainFormatError, match=r"train_frcnn\.json:2: invalid UTF-8 \(byte 0xff"):
        load_conceptual_captions(str(path), str(tmp_path))


# --------------------------------------------------------------------------- whole JSON files
def _detection_file(path, image_w):
    """A pretty-printed detection file (``image_w`` on line 3) with ``image_w`` written verbatim."""
    record = {"image_id": 1, "image_w": "@@", "image_h": 10, "num_boxes": 1, "boxes": "AAAAAAAAAAAAAAAAAAAAAA=="}
    text = json.dumps(record, indent=1).encode().replace(b'"@@"', image_w)
    assert text.split(b"\n")[2].startswith(b' "image_w": ')
    path.write_bytes(text)
    return str(path)


@pytest.mark.parametrize("image_w, message", [
    (b"1e999", r"det\.json:3: not valid JSON \(1e999 is out of the range of a float; NaN, Infinity"),
    (b"-1e999", r"det\.json:3: not valid JSON \(-1e999 is out of the range"),
    (b"NaN", r"det\.json:3: not valid JSON \(NaN is not a finite number"),
    (b"Infinity", r"det\.json:3: not valid JSON \(Infinity is not a finite number"),
    (b"9" * 5000, r"det\.json:3: not valid JSON \(Exceeds the limit \(4300 digits\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"det\.json: not valid JSON \(nested too deeply"),
    (b'"w\xc3"', r"det\.json:3: invalid UTF-8 \(byte 0xc3 at column 15"),  # a truncated sequence
])
def test_detection_file_names_file_and_line(tmp_path, image_w, message):
    with pytest.raises(DetectionFormatError, match=message):
        read_detection(_detection_file(tmp_path / "det.json", image_w))


def test_detection_file_in_a_zip_archive_names_member_and_line(tmp_path):
    _detection_file(tmp_path / "det.json", b"NaN")
    with zipfile.ZipFile(tmp_path / "frcnn.zip", "w", zipfile.ZIP_STORED) as z:
        z.write(tmp_path / "det.json", "inner/det.json")
    with pytest.raises(DetectionFormatError, match=r"frcnn\.zip@/inner/det\.json:3: not valid JSON \(NaN"):
        read_detection(str(tmp_path / "frcnn.zip@/inner/det.json"))


def test_vqa_questions_file_names_file_and_line(tmp_path):
    questions = tmp_path / "questions.json"
    text = json.dumps({"questions": [{"question_id": 1, "image_id": 0, "question": "what?"}]}, indent=1)
    questions.write_bytes(text.encode().replace(b'"image_id": 0', b'"image_id": ' + b"7" * 5000))
    line = 1 + text.split('"image_id"')[0].count("\n")
    with pytest.raises(VQAFormatError, match=rf"questions\.json:{line}: malformed JSON \(Exceeds the limit"):
        load_vqa(str(questions), None, str(tmp_path), "COCO_", str(tmp_path))
    questions.write_bytes(text.encode().replace(b"what?", b"wh\x80t?"))
    with pytest.raises(VQAFormatError, match=rf"questions\.json:{line + 1}: invalid UTF-8 \(byte 0x80"):
        load_vqa(str(questions), None, str(tmp_path), "COCO_", str(tmp_path))


# --------------------------------------------------------------------------- text files
def test_answer_vocabulary_names_file_and_line_of_invalid_utf8(tmp_path):
    path = tmp_path / "answers_vqa.txt"
    path.write_bytes(b"yes\nno\n\xff\xfe2\n")
    with pytest.raises(VQAFormatError, match=r"answers_vqa\.txt:3: invalid UTF-8 \(byte 0xff at column 1"):
        load_answer_vocab(str(path))
    path.write_bytes("yes\nno\ncaf\u00e9\n".encode())  # valid UTF-8 still reads
    assert load_answer_vocab(str(path)) == ["yes", "no", "caf\u00e9"]


# --------------------------------------------------------------------------- images
def _gradient16(h=48, w=64):
    """Every 16-bit value from 0 to 65535, in row-major order."""
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def _expected8(values):
    """The documented rescale, computed independently: round(v * 255 / 65535)."""
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


@pytest.fixture
def warnings16(caplog, monkeypatch):
    """Captures the 16-bit warning, which is logged once per process."""
    monkeypatch.setattr(d2_logger, "_LOG_COUNTER", Counter())
    # To caplog's root handler, even after a tool in this process ran setup_logger("vlbert_d2").
    monkeypatch.setattr(logging.getLogger("vlbert_d2"), "propagate", True)
    caplog.set_level(logging.WARNING, "vlbert_d2.data.common")
    return caplog


def test_16_bit_gray_png_is_rescaled_with_a_warning(tmp_path, warnings16):
    g = _gradient16()
    path = str(tmp_path / "gray16.png")
    assert cv2.imwrite(path, g)
    assert Image.open(path).mode == "I"  # Pillow's view of it; detectron2 clipped it to 255
    image = read_image(path, "BGR", "train.jsonl:1", "img_fn")
    assert image.dtype == np.uint8 and image.shape == g.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], _expected8(g))
    assert (image == 255).mean() < 0.01
    assert [r.getMessage() for r in warnings16.records] == [
        f"{path} is a 16-bit image: rescaled to 8 bits (round(v * 255 / 65535)); "
        "further 16-bit images are rescaled without a warning"]
    # Once per process: a second 16-bit image reads the same, silently.
    np.testing.assert_array_equal(read_image(path, "BGR", "train.jsonl:2", "img_fn"), image)
    assert len(warnings16.records) == 1


def test_16_bit_colour_png_is_rescaled_from_all_16_bits(tmp_path, warnings16):
    g = _gradient16()
    bgr = np.stack([g, g[::-1], 65535 - g], -1)
    path = str(tmp_path / "colour16.png")
    assert cv2.imwrite(path, bgr)
    assert Image.open(path).mode == "RGB"  # Pillow keeps the high byte: v // 256, not the rescale
    np.testing.assert_array_equal(read_image(path, "BGR", "r:1", "img_fn"), _expected8(bgr))
    np.testing.assert_array_equal(read_image(path, "RGB", "r:1", "img_fn"), _expected8(bgr[..., ::-1]))
    assert len(warnings16.records) == 1 and "colour16.png is a 16-bit image" in warnings16.text
    bgra = np.concatenate([bgr, g[..., None]], -1)  # RGBA: the alpha channel is dropped, as for 8 bits
    assert cv2.imwrite(path, bgra)
    np.testing.assert_array_equal(read_image(path, "BGR", "r:1", "img_fn"), _expected8(bgr))


def test_16_bit_png_in_a_zip_archive_is_rescaled(tmp_path):
    g = _gradient16()
    ok, png = cv2.imencode(".png", g)
    with zipfile.ZipFile(tmp_path / "images.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("a/gray16.png", png.tobytes())
    image = read_image(str(tmp_path / "images.zip@/a/gray16.png"), "RGB", "r:1", "image")
    np.testing.assert_array_equal(image[..., 1], _expected8(g))


def _with_orientation(png, orientation):
    """PNG bytes with an eXIf chunk holding the EXIF orientation, before the pixel data."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()[len(b"Exif\0\0"):]  # a PNG eXIf chunk has no "Exif" header
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    i = png.index(b"IDAT") - 4
    return png[:i] + chunk + png[i:]


@pytest.mark.parametrize("colour", [False, True])
def test_16_bit_png_keeps_its_exif_orientation(tmp_path, colour):
    g = _gradient16(12, 20)
    sixteen = np.stack([g, 65535 - g, g[::-1]], -1) if colour else g
    eight = _expected8(sixteen)  # the same picture exported in 8 bits, read by detectron2
    (tmp_path / "16.png").write_bytes(_with_orientation(cv2.imencode(".png", sixteen)[1].tobytes(), 6))
    (tmp_path / "8.png").write_bytes(_with_orientation(cv2.imencode(".png", eight)[1].tobytes(), 6))
    image = read_image(str(tmp_path / "16.png"), "BGR", "r:1", "img_fn")
    assert image.shape[:2] == (20, 12)  # orientation 6: rotated a quarter turn
    np.testing.assert_array_equal(image, d2_utils.read_image(str(tmp_path / "8.png"), format="BGR"))


def test_8_bit_images_read_exactly_as_detectron2_does(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")
    for name in ("photo.jpg", "rotated.jpg", "rgb.png", "rgba.png", "gray.png", "palette.png"):
        path = str(tmp_path / name)
        for fmt in ("BGR", "RGB", "L"):
            ours, theirs = read_image(path, fmt, "r:1", "img_fn"), d2_utils.read_image(path, format=fmt)
            assert ours.dtype == theirs.dtype == np.uint8, name
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} {fmt}")
    assert read_image(str(tmp_path / "rotated.jpg"), "BGR", "r:1", "img_fn").shape == (56, 40, 3)


def test_unsupported_and_non_images_name_record_field_and_path(tmp_path):
    text = tmp_path / "fake.jpg"
    text.write_text("this is not an image\n")
    with pytest.raises(OSError, match=r"train\.jsonl:7: field 'img_fn': cannot read image .*fake\.jpg: "
                                      r"cannot identify image file"):
        read_image(str(text), "BGR", "train.jsonl:7", "img_fn")
    # Float samples have no white level to rescale from: refused, not clipped to 0/255.
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "float.tif")
    with pytest.raises(OSError, match=r"r:1: field 'image': cannot read image .*float\.tif: F images "
                                      r"\(32-bit integer or float samples\) are not supported"):
        read_image(str(tmp_path / "float.tif"), "BGR", "r:1", "image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(cv2.imencode(".png", _gradient16())[1].tobytes()[:200])
    with pytest.raises(OSError, match=r"r:1: field 'image': cannot read image .*truncated\.png"):
        read_image(str(truncated), "BGR", "r:1", "image")
    assert not os.path.exists(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match=r"r:1: field 'image': image not found: .*missing\.jpg"):
        read_image(str(tmp_path / "missing.jpg"), "BGR", "r:1", "image")
