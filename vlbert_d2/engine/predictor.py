"""Run a trained VL-BERT on your own image with one call, as detectron2's ``DefaultPredictor``.

::

    from vlbert_d2.engine import VLBertPredictor

    predictor = VLBertPredictor(cfg)            # cfg.MODEL.WEIGHTS: a trained checkpoint
    image = cv2.imread("image.jpg")              # (H, W, 3) uint8, BGR (or a path)
    boxes = [[10, 10, 50, 50], [70, 20, 100, 60]]  # regions, x1 y1 x2 y2 in the image's pixels
    predictor(image, question="what is on the left?", boxes=boxes)["answer"]            # VQA
    predictor(image, expression="the left one", boxes=boxes)["box"]                     # RefCOCO+
    predictor(image, question="which is bigger ?", choices=["[0]", "[1]"],
              objects=["dog", "cat"], boxes=boxes)["answer"]                            # VCR Q->A

The task is the config's (``MODEL.VLBERT.HEAD``). The input is built by the task's evaluation
mapper (its ``encode_text``, and :func:`~vlbert_d2.data.common.resize_image_and_boxes` with
:func:`~vlbert_d2.data.common.whole_image_box` as RoI 0), and the model runs as in evaluation,
so the scores are those ``tools/train_net.py --eval-only`` computes for the same image, regions
and text. Regions come from ``boxes=`` or from a region detector given to the predictor, e.g.
the bottom-up-attention detector of ``projects/BottomUpAttention`` (a project above the
library, which the library does not import)::

    import bua  # projects/BottomUpAttention
    detector = bua.RegionDetector(bua.setup_detector_cfg(
        "projects/BottomUpAttention/configs/BUA-R101-C4-VG.yaml", "faster_rcnn_from_caffe_attr.pkl"))
    predictor = VLBertPredictor(cfg, detector=detector)
    predictor(image, question="what is on the left?")   # regions: the detector's
"""
import logging
import os

import numpy as np
import torch

from detectron2.modeling import build_model

from ..checkpoint import CheckpointError, VLBertCheckpointer
from ..config import finalize_vlbert_config
from ..data import build_vlbert_mapper
from ..data.common import read_image, resize_image_and_boxes, whole_image_box
from ..tasks import ANSWERS, get_task, task_of_head
from ..text import AnswerVocab

logger = logging.getLogger(__name__)

__all__ = ["VLBertPredictor", "PredictorInputError", "PREDICTOR_TASKS", "register_predictor_task",
           "parse_vcr_text", "text_to_region_attention"]

# The tasks the predictor answers: task name (vlbert_d2/tasks.py) -> the text arguments it takes
# (beside the image and regions). Its answer is made by the method ``_<name>_output`` and its
# text rows by ``_encode_text``; the demo's picture by vlbert_d2.utils.visualization.
PREDICTOR_TASKS = {"vqa": ("question",), "refcoco": ("expression",), "vcr": ("question", "choices")}


def register_predictor_task(task_name, texts):
    """Declare that :class:`VLBertPredictor` answers for the task ``task_name`` (a row of
    :data:`vlbert_d2.tasks.TASKS`), taking the keyword arguments ``texts``; a subclass of the
    predictor gives its ``_<task_name>_output`` and text encoding."""
    get_task(task_name)
    PREDICTOR_TASKS[task_name] = tuple(texts)
ANSWER_VOCAB_FILE = "answers_vqa.txt"  # the copy a VQA training run writes beside its weights


class PredictorInputError(ValueError):
    """An input the predictor cannot answer (wrong text arguments for the task, bad boxes, a
    region reference to no region...).

    Attributes:
        argument (str): the keyword argument at fault ("question", "choices", "boxes", ...).
        message (str): what is wrong with it.
    """

    def __init__(self, argument, message):
        super().__init__(f"{argument}: {message}")
        self.argument, self.message = argument, message


def parse_vcr_text(text, num_regions, argument="question"):
    """A VCR token list from text where ``[k]`` (or ``[k,j]``) names region k.

    ``"is [0] left of [1,2] ?"`` -> ``["is", [0], "left", "of", [1, 2], "?"]``. A list is taken as
    an already tokenised VCR sentence (words and lists of region indices) and checked.

    Raises:
        PredictorInputError: a malformed reference, or one to a region that does not exist.
    """
    words = text.split() if isinstance(text, str) else list(text)
    tokens = []
    for word in words:
        if isinstance(word, str) and not (word.startswith("[") and word.endswith("]") and len(word) > 2):
            tokens.append(word)
            continue
        try:
            refs = [int(k) for k in word[1:-1].split(",")] if isinstance(word, str) else [int(k) for k in word]
        except (TypeError, ValueError):
            raise PredictorInputError(argument, f"'{word}' is not a region reference like [0] or [0,2]") from None
        bad = [k for k in refs if not 0 <= k < num_regions]
        if bad or not refs:
            raise PredictorInputError(argument, f"region {bad[0] if bad else word} does not exist (there are "
                                                f"{num_regions} regions)")
        tokens.append(refs)
    return tokens


def text_to_region_attention(attentions, text_len, num_regions, sequence=0):
    """Attention of every text token to every RoI, in every layer.

    Args:
        attentions (tuple[Tensor]): per layer (S, A, T, T), the sequences laid out as
            ``[text (L slots) | RoIs (num_regions) | END]`` (see ``VLBertOutput``).
        text_len (int): real text tokens of the sequence (a prefix of its L slots).
        num_regions (int): RoIs, the whole image first.
        sequence (int): which of the S text sequences (VCR: one per answer choice).

    Returns:
        Tensor (layers, text_len, num_regions, A), float32 on the CPU.
    """
    maps = []
    for att in attentions:
        att = att[sequence]  # (A, T, T)
        slots = att.shape[-1] - num_regions - 1  # L
        maps.append(att[:, :text_len, slots:slots + num_regions].permute(1, 2, 0))
    return torch.stack(maps).float().cpu()


class VLBertPredictor:
    """A trained VL-BERT answering for one image at a time, as detectron2's ``DefaultPredictor``:
    it builds the model of ``cfg``, loads ``cfg.MODEL.WEIGHTS``, and runs it in evaluation mode
    (no gradients) on one image, its regions and a text.

    The task is the config's head: ``VQAHead`` (``question=``), ``RefCOCOHead``
    (``expression=``) or ``VCRHead`` (``question=`` and ``choices=``; for a QA->R model also
    ``answer=``). See :meth:`__call__` for the inputs and the outputs.

    Attributes:
        cfg (CfgNode): the config used (frozen): a VQA model's ``MODEL.VLBERT.VQA.ANSWER_VOCAB``
            filled in, ``MODEL.VLBERT.FEATURE_CACHE`` cleared (region features are computed from
            the pixels by the same trunk).
        model (nn.Module): the ``VLBERT`` model, in eval mode, on ``cfg.MODEL.DEVICE``.
        task (str): "vqa", "refcoco" or "vcr".
        mapper: the task's evaluation dataset mapper (tokenizer, resize, text encoding).
        answer_vocab (AnswerVocab or None): VQA: the answers, one per row of the classifier
            (``list(answer_vocab)``; ``<unk>`` rows are never predicted).
        detector (callable or None): the region detector used when ``boxes`` is not given.
    """

    def __init__(self, cfg, detector=None):
        """
        Args:
            cfg (CfgNode): a VL-BERT config (``add_vlbert_config``) whose ``MODEL.WEIGHTS`` is a
                trained checkpoint (read safely: ``.pth`` with ``weights_only=True``, ``.pkl``
                through the restricted unpickler). Empty: random weights, with a warning.
                For a VQA model the answer list is ``MODEL.VLBERT.VQA.ANSWER_VOCAB`` when it names
                a file, else the ``answers_vqa.txt`` that training wrote beside the weights, else
                that of the config's datasets. The config is finalized
                (:func:`vlbert_d2.config.finalize_vlbert_config`) before the model is built.
            detector (callable or None): finds the regions when a call gives no ``boxes``:
                ``detector([image_bgr], image_format="BGR")[0]`` returns ``Instances`` with
                ``pred_boxes`` (as ``bua.RegionDetector`` of ``projects/BottomUpAttention``) or
                an (N, 4) array of boxes, in the image's pixels.

        Raises:
            CheckpointError: the weights file is missing, unreadable, or asks to run code.
            ValueError: a head the predictor does not answer for, or an input format other than
                BGR/RGB.
        """
        head = cfg.MODEL.VLBERT.HEAD
        task = task_of_head(head)
        if task is None or task.name not in PREDICTOR_TASKS:
            heads = sorted(get_task(name).head for name in PREDICTOR_TASKS)
            raise ValueError(f"VLBertPredictor answers with the heads {heads}, not MODEL.VLBERT.HEAD={head!r}")
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ValueError(f"VLBertPredictor reads BGR or RGB images, not INPUT.FORMAT={cfg.INPUT.FORMAT!r}")
        self.task = task.name
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.VLBERT.FEATURE_CACHE = ""  # the cache holds what the trunk computes from pixels
        named = cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB
        answers = task.label_space == ANSWERS
        if answers and not (named and os.path.isfile(named)) and cfg.MODEL.WEIGHTS:
            beside = os.path.join(os.path.dirname(cfg.MODEL.WEIGHTS), ANSWER_VOCAB_FILE)
            if os.path.isfile(beside):
                if named:
                    logger.info("VLBertPredictor: %s not found, using the answer list beside the weights, %s",
                                named, beside)
                cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB = beside  # the training run's copy: no dataset needed
        cfg = finalize_vlbert_config(cfg)  # the sizes (answers, object classes) the model is built with
        cfg.freeze()
        self.cfg = cfg

        self.model = build_model(cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            if "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
                raise CheckpointError(f"checkpoint not found: {cfg.MODEL.WEIGHTS}")  # (fvcore: an assert)
            VLBertCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("VLBertPredictor: MODEL.WEIGHTS is empty: random weights, the answers mean nothing")
        self.mapper = build_vlbert_mapper(cfg, is_train=False)
        self.answer_vocab = AnswerVocab(self.mapper.answer_vocab) if answers else None
        self.detector = detector

    def __call__(self, image, *, question=None, expression=None, choices=None, objects=None, answer=None,
                 boxes=None, attention=False, top_k=5):
        """Answer for one image.

        Args:
            image (ndarray or str): (H, W, 3) uint8 in BGR order, as ``cv2.imread`` gives and
                detectron2's ``DefaultPredictor`` takes ((H, W) grayscale is accepted too); or
                the path of an image file (read as the datasets' images are: EXIF orientation
                applied, 16-bit rescaled).
            question (str): VQA: the question. VCR: the question, where ``[k]`` (or ``[k,j]``)
                names region k (the region's name from ``objects`` is what the model reads).
            expression (str): RefCOCO+: the referring expression.
            choices (list[str]): VCR: the answer choices (for a QA->R model, the rationales),
                with ``[k]`` references as in ``question``.
            objects (list[str]): VCR: the class name of each region (default "object"; "person"
                becomes a gender-neutral name, as in the VCR data).
            answer (str): VCR QA->R: the answer the rationales explain.
            boxes (array-like or None): (N, 4) regions, ``[x1, y1, x2, y2]`` in the image's
                pixels (``[]``: the whole image only). None: the predictor's detector finds them.
                They have no instance masks: each RoI is pooled whole (as VCR objects without
                polygons are).
            attention (bool): also return the attention maps (``output["attention"]``).
            top_k (int): VQA: the answers listed in ``output["top_k"]``.

        Returns:
            dict, with for every task ``task`` ("vqa", "refcoco", "vcr"), the given
            ``question``, ``expression`` or ``choices``,
            ``boxes``: (N, 4) float32 ndarray, the regions in the image's pixels (RoI k + 1 of
            the model; RoI 0 is the whole image), and ``detections``: the detector's
            ``Instances`` when it found the regions, else None; then

            * VQA: ``answer`` (str), ``top_k`` (list of ``(answer, score)``, best first),
              ``scores`` (Tensor (A,): the sigmoid score of every answer of ``answer_vocab``;
              ``<unk>`` is never the answer nor listed);
            * RefCOCO+: ``box`` (list of 4 floats: the referred region, in the image's pixels;
              ``[0, 0, W - 1, H - 1]`` when it is the whole image), ``region`` (its index in
              ``boxes``, None for the whole image), ``index`` (the chosen RoI: 0 the whole image,
              k + 1 region k), ``scores`` (Tensor (N + 1,): every RoI's score, the whole image
              first);
            * VCR: ``answer`` (int: the chosen choice), ``choice`` (its text), ``scores``
              (Tensor (K,): the choices' probabilities), ``mentioned`` (the regions the chosen
              choice refers to, in order);
            * with ``attention=True``, ``attention``: a dict with ``layers`` (tuple of one
              Tensor (S, A, T, T) per layer: every head's attention over each of the S text
              sequences (VCR: one per choice), laid out as ``[text (L slots) | RoIs (N + 1) |
              END]``), ``sequence`` (the sequence of the answer: VCR's chosen choice, else 0),
              ``tokens`` (its word pieces, ``[CLS]`` ... ``[SEP]``), and ``text_to_region``
              (Tensor (layers, len(tokens), N + 1, A): its tokens' attention to the RoIs, the
              whole image first).

            Tensors are on the CPU.

        Raises:
            PredictorInputError: text arguments that do not fit the task, bad boxes, a region
                reference to no region, no regions (no ``boxes`` and no detector).
            FileNotFoundError, OSError: an image path that cannot be read (named).
        """
        texts = self._check_text(question, expression, choices, answer)
        if objects is not None and self.task != "vcr":
            raise PredictorInputError("objects", f"region names are for VCR models, not a {self.task} one")
        image = self._read(image)
        h, w = image.shape[:2]
        boxes, detections = self._regions(image, boxes)
        x = self._image_input(image, boxes, detections)
        text_out = self._encode_text(x, texts, objects, len(boxes))
        with torch.no_grad():
            if attention:
                outputs, batch = self.model.encode([x], output_attentions=True)
                result = self.model.head(outputs, batch)[0]
            else:
                result = self.model([x])[0]  # the evaluation path (tools/train_net.py --eval-only)
        echoed = {k: v for k, v in texts.items() if k != "answer"}  # "answer": the prediction's
        out = {"task": self.task, **echoed, "boxes": boxes, "detections": detections}
        out.update(getattr(self, f"_{self.task}_output")(result, boxes, w, h, texts, text_out, top_k))
        if attention:
            sequence = out["answer"] if self.task == "vcr" else 0
            text_len = int(x["text_mask"][sequence].sum())
            tokens = self.mapper.tokenizer.convert_ids_to_tokens(x["input_ids"][sequence, :text_len].tolist())
            out["attention"] = {
                "layers": tuple(a.detach().cpu() for a in outputs.attentions),
                "sequence": sequence,
                "tokens": tokens,
                "text_to_region": text_to_region_attention(outputs.attentions, text_len, len(boxes) + 1, sequence),
            }
        return out

    # --- inputs ---

    def _check_text(self, question, expression, choices, answer):
        """The text arguments the task takes, checked before anything runs."""
        given = {k: v for k, v in (("question", question), ("expression", expression), ("choices", choices),
                                   ("answer", answer)) if v is not None}
        wanted = PREDICTOR_TASKS[self.task]
        if self.task == "vcr" and self.cfg.MODEL.VLBERT.VCR.TASK == "QA2R":
            wanted = wanted + ("answer",)
        names = {"vqa": "a VQA model", "refcoco": "a RefCOCO+ model",
                 "vcr": f"a VCR {self.cfg.MODEL.VLBERT.VCR.TASK} model"}.get(self.task, f"a {self.task} model")
        for key in wanted:
            if key not in given:
                raise PredictorInputError(key, f"{names} needs {' and '.join(k + '=' for k in wanted)}")
        for key in given:
            if key not in wanted:
                raise PredictorInputError(key, f"{names} takes {' and '.join(k + '=' for k in wanted)}, not {key}=")
        if self.task == "vcr":
            if isinstance(choices, str) or not len(choices):
                raise PredictorInputError("choices", "expected a non-empty list of texts")
            given["choices"] = list(choices)
        return given

    def _read(self, image):
        """The image as a (H, W, 3) uint8 BGR array."""
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            return read_image(path, "BGR", "VLBertPredictor", field="image")
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise PredictorInputError("image", f"expected a (H, W, 3) uint8 BGR array (or a path), got a "
                                               f"{image.shape} {image.dtype} array")
        return image

    def _regions(self, image, boxes):
        """(N, 4) float32 boxes and the detector's Instances (or None)."""
        if boxes is not None:
            if hasattr(boxes, "tensor"):  # detectron2 Boxes
                boxes = boxes.tensor
            if isinstance(boxes, torch.Tensor):
                boxes = boxes.detach().cpu().numpy()
            try:
                array = np.asarray(boxes, dtype=np.float32)
            except (TypeError, ValueError):
                raise PredictorInputError("boxes", "expected a list of [x1, y1, x2, y2]") from None
            if array.size == 0:
                array = array.reshape(0, 4)
            if array.ndim != 2 or array.shape[1] != 4:
                raise PredictorInputError("boxes", f"expected a list of [x1, y1, x2, y2], got shape {array.shape}")
            if not np.isfinite(array).all():
                raise PredictorInputError("boxes", "boxes must be finite numbers")
            if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
                raise PredictorInputError("boxes", "expected [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
            return array, None
        if self.detector is None:
            raise PredictorInputError("boxes", "no regions: give boxes=[[x1, y1, x2, y2], ...] or build the "
                                               "predictor with a detector")
        # A contiguous copy for the detector only: freed once the regions are found.
        detections = self.detector([np.ascontiguousarray(image)], image_format="BGR")[0]
        found = detections.pred_boxes.tensor if hasattr(detections, "pred_boxes") else detections
        if isinstance(found, torch.Tensor):
            found = found.detach().cpu().numpy()
        return np.asarray(found, dtype=np.float32).reshape(-1, 4), detections

    def _image_input(self, image, boxes, detections):
        """The model's visual input: RoI 0 the whole image, then the regions (as the mappers)."""
        h, w = image.shape[:2]
        all_boxes = np.concatenate([[whole_image_box(w, h)], boxes])
        if getattr(self.mapper, "detection_features", False):
            # Precomputed-feature VQA (MODEL.VLBERT.DETECTION_FEATURES): the RoI features are the
            # detector's pooled ones, read as the mapper reads a detection file's.
            features = getattr(detections, "features", None) if detections is not None else None
            if features is None:
                raise PredictorInputError("boxes", "this model reads the detector's region features "
                                                   "(MODEL.VLBERT.DETECTION_FEATURES): build the predictor "
                                                   "with a detector and give no boxes")
            det = {"image_w": w, "image_h": h, "boxes": boxes,
                   "features": features.detach().cpu().numpy().astype(np.float32)}
            return self.mapper.precomputed_inputs({"detection_file": "the detector's regions",
                                                   "source": "VLBertPredictor"}, det)
        if self.cfg.INPUT.FORMAT == "RGB":
            image = image[:, :, ::-1]
        tensor, rois, _, _ = resize_image_and_boxes(self.mapper.augmentations, image, all_boxes)
        return {"image": tensor, "boxes": rois, "height": h, "width": w}

    def _encode_text(self, x, texts, objects, num_regions):
        """Add the task's text rows to ``x`` with the mapper's ``encode_text``."""
        if self.task == "vqa":
            x.update(self.mapper.encode_text(texts["question"]))
            return None
        if self.task == "refcoco":
            x.update(self.mapper.encode_text(texts["expression"]))
            return None
        if objects is None:
            objects = ["object"] * num_regions
        elif isinstance(objects, str) or len(objects) != num_regions:
            raise PredictorInputError("objects", f"{1 if isinstance(objects, str) else len(objects)} names for "
                                                 f"{num_regions} regions")
        question = parse_vcr_text(texts["question"], num_regions, "question")
        choices = [parse_vcr_text(c, num_regions, "choices") for c in texts["choices"]]
        context = question
        if "answer" in texts:  # QA->R: sentence A is the question and the answer
            context = (question, parse_vcr_text(texts["answer"], num_regions, "answer"))
        x.update(self.mapper.encode_text(list(objects), [context], choices))
        return choices

    # --- outputs ---

    def _vqa_output(self, result, boxes, w, h, texts, choices, top_k):
        scores = result["scores"].detach().float().cpu()
        # <unk> (a row of the official vocabulary) is never the answer, as in the evaluator.
        return {"answer": self.answer_vocab.predict(scores), "scores": scores,
                "top_k": self.answer_vocab.top_k(scores, top_k) if top_k > 0 else []}

    def _refcoco_output(self, result, boxes, w, h, texts, choices, top_k):
        index = int(result["index"])  # over [whole image, boxes...]
        region = None if index == 0 else index - 1
        box = whole_image_box(w, h) if region is None else [float(v) for v in boxes[region]]
        return {"box": box, "region": region, "index": index, "scores": result["scores"].detach().float().cpu()}

    def _vcr_output(self, result, boxes, w, h, texts, choices, top_k):
        scores = result["scores"].detach().float().cpu()
        best = int(scores.argmax())
        mentioned = [k for t in choices[best] if isinstance(t, list) for k in t]
        return {"answer": best, "choice": texts["choices"][best], "scores": scores, "mentioned": mentioned}
