#!/usr/bin/env python
"""The paper's whole pipeline in miniature, on CPU (make demo-pipeline): a bottom-up-attention
detector trained on the synthetic scenes (object classes = shapes, attributes = colours), then
VL-BERT on what it sees: VQA on its extracted regions and features, RefCOCO+ end to end from the
pixels with its trunk (MODEL.VLBERT.DETECTOR_WEIGHTS), VCR on its trunk's features at the
dataset's boxes, and pre-training whose masked RoI classification predicts its class
distributions.

Stages (each a command, printed with its log; finished ones are skipped on a rerun, so an
interrupted pipeline resumes where it stopped; a run folder trained with other config files or
options is refused, naming it, not skipped):

detector   1. detection data: python -m synthetic_vl --format detection (<datasets>/synthetic_detection)
           2. projects/BottomUpAttention/train_detector.py with BUA-Tiny-Synthetic.yaml (skipped
              when <out>/detector/model_final.pth exists, or with --detector-weights), then its
              box AP and attribute (colour) accuracy on synthetic_detection_val
vqa        colour and shape questions (<datasets>/synthetic_vqa_pixels): tools/extract_regions.py
           --features over its images into bua_regions/, tools/train_net.py with
           VLBERT-Tiny-PipelineVQA.yaml (MODEL.VLBERT.DETECTION_FEATURES: the detector's
           features), --eval-only; VQA accuracy per question type
refcoco    "the red kite" expressions (<datasets>/synthetic_refcoco_pixels): the detector's
           regions over its images, written as the proposals file of the "_det" datasets; VL-BERT
           with the detector's trunk (VLBERT-Tiny-PipelineRefCOCO+.yaml); accuracy at IoU >= 0.5
           of the chosen region among the detector's
vcr        colour, position and size questions (<datasets>/synthetic_vcr_pixels), on the
           dataset's boxes: tools/extract_features.py runs the detector's trunk (stem to res5,
           MODEL.VLBERT.DETECTOR_WEIGHTS) over its images into a feature cache (bua_features/),
           VL-BERT trains on it (VLBERT-Tiny-PipelineVCR.yaml, MODEL.VLBERT.FEATURE_CACHE: the
           trunk frozen); Q->A per question type. (End to end from the pixels, res5 trained: the
           same config without FEATURE_CACHE, docs/measurements.md.)
pretrain   captions (<datasets>/synthetic_captions_pixels): the detector's regions, class
           distributions and features over their images; pre-training with
           VLBERT-Tiny-PipelinePretrain.yaml, whose masked RoI classification predicts the
           detector's class distribution (and its attribute distribution, not in the paper);
           masked-RoI accuracies against the majority class and attribute

A region folder records the sha256 of the detector that wrote it, and each VL-BERT run the one
whose trunk or features it used: another detector's are refused (remove them to redo).

After the detector the four tasks are independent: --jobs N runs N of them at a time (pre-training,
the longest, first), each of their commands with $OMP_NUM_THREADS / N threads (at least 1). On 2 cores the
tiny runs do more side by side on one thread each than one after the other on two (make
demo-pipeline: --jobs 2). A task's figures depend on its thread count in the last bits, not on
which tasks ran beside it.

Then a summary (also <out>/summary.json): each stage's figures and wall time. The datasets root
is $DETECTRON2_DATASETS (default ./datasets); the threads, $OMP_NUM_THREADS (default: the cores).

Example:
    python projects/SyntheticVL/pipeline.py                      # everything (see the README)
    python projects/SyntheticVL/pipeline.py --tasks vqa vcr      # the detector, then two tasks
    python projects/SyntheticVL/pipeline.py --detector-weights path/to/model_final.pth
    OMP_NUM_THREADS=2 python projects/SyntheticVL/pipeline.py --jobs 2   # as make demo-pipeline
"""
import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter

# projects/SyntheticVL/pipeline.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETECTOR_CONFIG = "projects/BottomUpAttention/configs/BUA-Tiny-Synthetic.yaml"
TASKS = ("vqa", "refcoco", "vcr", "pretrain")
# With --jobs > 1 the tasks start in this order: pre-training, the longest, first, and VQA, the
# shortest, last (measured on one thread, data to evaluation, 2026-12-03, pre-training and VCR in
# bf16: pre-training 372 s, RefCOCO+ 352 s, VCR 233 s, VQA 180 s; so with two jobs pre-training
# then VQA run beside RefCOCO+ then VCR, 553 s against 585 s).
LONGEST_FIRST = ("pretrain", "refcoco", "vcr", "vqa")

VQA_CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelineVQA.yaml"
VQA_FOLDER = "synthetic_vqa_pixels"
VQA_QUESTION_TYPES = ("color", "shape")
# Image folder -> region folder (vlbert_d2/data/__init__.py: _BUA_REGIONS).
REGION_FOLDERS = {"train2014": "bua_regions/trainval2014", "val2014": "bua_regions/trainval2014",
                  "test2015": "bua_regions/test2015"}
VQA_VAL = "synthetic_vqa_pixels_val2014"

REFCOCO_CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelineRefCOCO+.yaml"
REFCOCO_FOLDER = "synthetic_refcoco_pixels"
REFCOCO_TYPES = ("color",)  # "the {colour} {shape}"
REFCOCO_VAL = "synthetic_refcoco+_pixels_val_det"

VCR_CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelineVCR.yaml"
VCR_FOLDER = "synthetic_vcr_pixels"
VCR_TYPES = ("color", "position", "size")
# The first word of a synthetic VCR question -> its type (synthetic_vl/vcr.py).
VCR_QUESTION_WORDS = {"what": "color", "where": "position", "which": "size"}
VCR_TRAIN = "synthetic_vcr_pixels_train"
VCR_VAL = "synthetic_vcr_pixels_val"
VCR_FEATURES = "bua_features"  # the trunk's feature cache, in the VCR dataset folder

PRETRAIN_CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelinePretrain.yaml"
CAPTIONS_FOLDER = "synthetic_captions_pixels"
CAPTION_TYPES = ("objects", "biggest", "where")
CAPTIONS_VAL = "synthetic_captions_pixels_val"
# How a VL-BERT run executes, not what it computes: given on its command line, before the task's
# --<task>-opts (which can override them), and left out of its config stamp, so a run made
# without them is not refused.
# - Training does not also evaluate at its end: the evaluation stage (--eval-only) does.
# - VQA and VCR map their data in the training process, with no loader worker: handing a batch
#   over from a worker process took 93 and 50 ms, mapping it 16 and 4 ms; in the pipeline a step
#   took 20% and 5% less, the weights bit-identical (docs/measurements.md, "The loader worker").
#   RefCOCO+ (its mapper decodes images: 64 ms a batch) ran 11% slower without its worker, and
#   the pre-training the same: they keep it. The batches do not depend on the number of workers
#   (vlbert_d2/data/resumable_loader.py; tests/engine/test_exact_resume.py).
NO_WORKER = ("DATALOADER.NUM_WORKERS", "0")
RUN_OPTS = {"vqa": NO_WORKER, "vcr": NO_WORKER, "refcoco": (), "pretrain": ()}
TRAIN_RUN_OPTS = ("TEST.EVAL_PERIOD", "0")
_STAMP = "DETECTOR_SHA256"
_CONFIG_STAMP = "CONFIG_SHA256"
# The pipeline's own sizes where they differ from the generator's (the whole pipeline in 20 minutes).
DEFAULT_COUNTS = {"caption": ["train=1000", "val=200"]}


def copypaste_tables(text):
    """Every metrics table detectron2 printed ("copypaste: Task: X", names, values): {task: {name:
    value}}. A task's tables of several test datasets are merged, the later's values winning (the
    pre-training's: the captions' masked words and RoIs, then the text corpus's masked words)."""
    lines = re.findall(r"copypaste: (.*)", text)
    tables = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: ") and i + 2 < len(lines):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            tables.setdefault(line[len("Task: "):].strip(), {}).update(
                {n: float(v) for n, v in zip(names, values)})
    return tables


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_digest(config, opts):
    """sha256 of a config (relative to the repository, or absolute) as detectron2 reads it, its
    ``_BASE_`` chain merged in (so a comment does not count, a base's value does), and of the
    options given on top: what decides how a run trains."""
    from detectron2.config import CfgNode

    merged = CfgNode.load_yaml_with_base(os.path.join(REPO, config), allow_unsafe=True)
    text = json.dumps([merged, [str(o) for o in opts]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# The config keys that shape the RoI features a trunk computes (vlbert_d2/modeling/visual.py and
# the mappers' test-time resizing): a feature cache made with other values is refused.
FEATURE_KEYS = ("MODEL.WEIGHTS", "MODEL.BACKBONE.NAME", "MODEL.RESNETS", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
                "MODEL.VLBERT.CAFFE_MAXPOOL", "MODEL.VLBERT.RES5_DILATION", "MODEL.VLBERT.POOLER_TYPE",
                "MODEL.VLBERT.POOLER_RESOLUTION", "MODEL.VLBERT.POOLER_SAMPLING_RATIO",
                "MODEL.VLBERT.USE_INSTANCE_MASKS", "MODEL.VLBERT.FIXED_PAD", "INPUT.FORMAT", "INPUT.MIN_SIZE_TEST",
                "INPUT.MAX_SIZE_TEST")


def feature_digest(config, opts):
    """sha256 of the values of :data:`FEATURE_KEYS` in ``config`` (a file of the repository,
    its _BASE_ chain) with the options ``opts`` on top."""
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(list(opts))
    picked = {}
    for key in FEATURE_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        picked[key] = node
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def native_bf16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU computes bf16 natively (Linux's avx512_bf16 or amx_bf16 flag), False
    when it does not, None when unknown (no such file): the VCR and pre-training configs train
    under bf16 autocast, which a CPU without it emulates."""
    try:
        flags = set(open(cpuinfo).read().split())
    except OSError:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_note(tasks, native):
    """The note for the tasks among ``tasks`` whose configs train under bf16 autocast (VCR and
    the pre-training) when ``native`` (:func:`native_bf16`) is False, naming how to train them in
    fp32; None when there is nothing to say."""
    configs = {"vcr": VCR_CONFIG, "pretrain": PRETRAIN_CONFIG}
    names = [t for t in configs if t in tasks]
    if native is not False or not names:
        return None
    return (f"note: {' and '.join(configs[t] for t in names)} train under bf16 autocast, which this CPU emulates "
            "(no avx512_bf16 or amx_bf16 flag): it may run slower than fp32; to train in fp32: "
            + ", ".join(f"--{t}-opts SOLVER.AMP.ENABLED False" for t in names))


def vcr_accuracy_per_type(predictions_file, records_file):
    """Q->A accuracy (percent) per question type of the synthetic VCR records, from the
    evaluator's predictions file ({annot_id: {"scores": [4 floats], ...}})."""
    labels, types = {}, {}
    with open(records_file) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                labels[r["annot_id"]] = r["answer_label"]
                types[r["annot_id"]] = VCR_QUESTION_WORDS.get(r["question"][0], r["question"][0])
    right, total = Counter(), Counter()
    for annot_id, pred in json.load(open(predictions_file)).items():
        scores = pred["scores"]
        qtype = types[annot_id]
        total[qtype] += 1
        right[qtype] += int(max(range(len(scores)), key=scores.__getitem__) == labels[annot_id])
    per_type = {t: round(100.0 * right[t] / total[t], 2) for t in sorted(total)}
    return per_type, dict(total)


class Pipeline:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.root = os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
        self.threads = int(os.getenv("OMP_NUM_THREADS") or os.cpu_count() or 1)
        # The detector runs alone on every thread; the tasks after it share them (--jobs).
        self.task_threads = max(1, self.threads // args.jobs)
        self.env = dict(os.environ, DETECTRON2_DATASETS=self.root, OMP_NUM_THREADS=str(self.threads))
        self.task_env = dict(self.env, OMP_NUM_THREADS=str(self.task_threads))
        self.times = {}
        self.results = {}
        self.data_info = {}  # dataset folder -> the generator's record
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)

    def run(self, name, cmd, task=True):
        """Run ``cmd`` (a list; python scripts relative to the repository), its output to a log;
        returns the output. Fails the pipeline with the log's end when the command fails.
        ``task``: a task's command (--jobs: its share of the threads), else the detector's (all)."""
        cmd = [sys.executable, *cmd]
        log = os.path.join(self.out, "logs", f"{name}.log")
        print("$ " + " ".join(cmd[1:]), flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, env=self.task_env if task else self.env, stdout=f,
                                  stderr=subprocess.STDOUT)
        text = open(log).read()
        if proc.returncode:
            raise SystemExit(f"{name}: failed (exit {proc.returncode}); the end of {log}:\n{text[-3000:]}")
        return text

    def stage(self, name, fn):
        start = time.time()
        print(f"== {name}", flush=True)
        note = fn()
        self.times[name] = round(time.time() - start, 1)
        print(f"   {name}: {self.times[name]:.1f} s{f' ({note})' if note else ''}", flush=True)

    @staticmethod
    def resume(run_dir):
        """--resume when an interrupted training left a checkpoint in ``run_dir``."""
        return ["--resume"] if os.path.isfile(os.path.join(run_dir, "last_checkpoint")) else []

    def stamp(self, folder, data=None):
        """Record the detector's sha256 (and the generator's record of ``data``, a dataset
        folder) in ``folder``; refuse a folder made with another detector or other data."""
        text = self.digest + ("\n" + json.dumps(self.data_info[data], sort_keys=True) if data else "")
        path = os.path.join(folder, _STAMP)
        if os.path.isfile(path) and open(path).read().strip() != text:
            raise SystemExit(f"{folder}: made with another detector or from other data ({path}); remove the "
                             "folder to redo it with these")
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")

    def config_stamp(self, run_dir, config, opts, what="trained", digest=None):
        """Record which config (its files and the options on top) trains ``run_dir``; refuse a
        run folder trained, or started, with another one: a rerun would skip it, or resume it,
        with the old settings. (A feature cache: ``what`` "made", ``digest`` the feature keys'.)"""
        digest = digest or config_digest(config, opts)
        path = os.path.join(run_dir, _CONFIG_STAMP)
        if os.path.isfile(path):
            if open(path).read().strip() != digest:
                raise SystemExit(f"{run_dir}: {what} with another config than {config} and the options "
                                 f"{list(opts)} ({path}); remove the folder to redo it with these")
        elif any(os.path.isfile(os.path.join(run_dir, f))
                 for f in ("model_final.pth", "last_checkpoint", "index.json")):
            raise SystemExit(f"{run_dir}: no record of the config it was {what} with ({path}: made before "
                             "the pipeline kept one); remove the folder to redo it")
        os.makedirs(run_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(digest + "\n")

    def generate(self, name, fmt, folder, types, counts, task=True):
        """python -m synthetic_vl (which leaves a complete dataset as it is); then the check that
        the dataset there is the one asked for (seed, types, counts), from the generator's record."""
        root = os.path.join(self.root, folder)
        self.run(name, ["-m", "synthetic_vl", "--format", fmt, "--root", root, "--seed", str(self.args.seed),
                        *(["--question-types", *types] if types else []), *(["--counts", *counts] if counts else [])],
                 task=task)
        markers = [f for f in os.listdir(root) if f.startswith(".synthetic") and f.endswith("_complete")]
        info = json.load(open(os.path.join(root, markers[0]))) if len(markers) == 1 else None
        if info is None:
            raise SystemExit(f"{root}: no single record of the generator (.synthetic*_complete): {markers}")
        wanted = {split: int(n) for split, n in (c.split("=") for c in counts)}
        found_types = next((v for k, v in info.items() if k.endswith("_types")), [])
        differs = [f"seed {info.get('seed')} (asked {self.args.seed})"] if info.get("seed") != self.args.seed else []
        if types and list(found_types) != list(types):
            differs.append(f"types {found_types} (asked {list(types)})")
        differs += [f"{split}={info['counts'].get(split)} (asked {n})" for split, n in wanted.items()
                    if info["counts"].get(split) != n]
        if differs:
            raise SystemExit(f"{root} holds another dataset: " + ", ".join(differs) + "; remove the folder "
                             "(and its runs under " + self.out + ") to generate the one asked for")
        self.data_info[folder] = info

    def extract(self, name, output, source, data, features=True, naming="image_id"):
        """tools/extract_regions.py with the detector; ``source``: ["--input", folder] or
        ["--dataset", name], images of the dataset folder ``data``. Returns a one-line note;
        failed images are reported."""
        self.stamp(output, data)
        text = self.run(name, ["tools/extract_regions.py", *source, "--output", output, "--config-file",
                               DETECTOR_CONFIG, "--weights", self.weights, *(["--features"] if features else []),
                               "--file-names", naming, "--device", "cpu", "--batch-size", "8", "--num-workers", "1",
                               "--no-progress", *self.args.detector_opts])
        found = re.findall(r"(\d+) images; (\d+) written, (\d+) already there, (\d+) failed", text)
        total, written, skipped, failed = map(int, found[-1])
        if failed:
            # Kept apart: the next extraction into the same folder rewrites the report.
            report = os.path.join(self.out, "logs", f"failed_images_{name}.tsv")
            shutil.copyfile(os.path.join(output, "failed_images.tsv"), report)
            print(f"   {name}: {failed} images failed (no region, unreadable...), listed in {report}; "
                  "their records cannot be loaded", flush=True)
        return f"{name}: {written} written, {skipped} already there, {failed} failed"

    def train(self, name, config, data, opts, trunk=False):
        """tools/train_net.py into <out>/<name> (skipped when its model_final.pth exists), on
        the dataset folder ``data``; ``trunk``: VL-BERT's visual trunk is the detector's
        (MODEL.VLBERT.DETECTOR_WEIGHTS)."""
        run_dir = os.path.join(self.out, name)
        self.stamp(run_dir, data)
        self.config_stamp(run_dir, config, ["SEED", str(self.args.seed), *opts])
        if os.path.isfile(os.path.join(run_dir, "model_final.pth")):
            return "done before: skipped"
        self.run(f"{name}_train", ["tools/train_net.py", "--config-file", config, *self.resume(run_dir),
                                   "OUTPUT_DIR", run_dir, "SEED", str(self.args.seed), *self.trunk_opts(trunk),
                                   *TRAIN_RUN_OPTS, *RUN_OPTS[name], *opts])
        return None

    def evaluate(self, name, config, opts, trunk=False):
        """tools/train_net.py --eval-only on <out>/<name>/model_final.pth; returns (output folder, log)."""
        run_dir = os.path.join(self.out, f"{name}_eval")
        text = self.run(f"{name}_eval", ["tools/train_net.py", "--config-file", config, "--eval-only",
                                         "MODEL.WEIGHTS", os.path.join(self.out, name, "model_final.pth"),
                                         "OUTPUT_DIR", run_dir, *self.trunk_opts(trunk), *RUN_OPTS[name], *opts])
        return run_dir, text

    def trunk_opts(self, trunk):
        return ["MODEL.VLBERT.DETECTOR_WEIGHTS", self.weights] if trunk else []

    # --- the detector ---

    def detection_data(self):
        self.generate("detection_data", "detection", "synthetic_detection", (), self.args.detection_counts, task=False)

    def detector(self):
        metrics_file = os.path.join(self.out, "detector_metrics.json")
        if self.args.detector_weights:
            self.weights = os.path.abspath(self.args.detector_weights)
            run_dir, train = None, False
        else:
            run_dir = os.path.join(self.out, "detector")
            self.weights = os.path.join(run_dir, "model_final.pth")
            self.config_stamp(run_dir, DETECTOR_CONFIG, ["SEED", str(self.args.seed), *self.args.detector_opts])
            train = not os.path.isfile(self.weights)
        if not train and not os.path.isfile(self.weights):
            raise SystemExit(f"--detector-weights: file not found: {self.weights}")
        known = json.load(open(metrics_file)) if os.path.isfile(metrics_file) else {}
        if not train and known.get("weights_sha256") == sha256(self.weights):
            self.digest = known["weights_sha256"]
            self.results["detector"] = known
            return "done before: skipped"
        run_dir = run_dir if train else os.path.join(self.out, "detector_eval")
        tool = ["projects/BottomUpAttention/train_detector.py", "--config-file", DETECTOR_CONFIG]
        if train:
            text = self.run("detector", [*tool, *self.resume(run_dir), "OUTPUT_DIR", run_dir, "SEED",
                                         str(self.args.seed), *self.args.detector_opts], task=False)
        else:  # given or trained before: evaluated once
            text = self.run("detector_eval", [*tool, "--eval-only", "MODEL.WEIGHTS", self.weights,
                                              "OUTPUT_DIR", run_dir, *self.args.detector_opts], task=False)
        tables = copypaste_tables(text)
        self.digest = sha256(self.weights)
        self.results["detector"] = {"weights": self.weights, "weights_sha256": self.digest,
                                    "bbox": tables.get("bbox", {}), "attributes": tables.get("attributes", {})}
        json.dump(self.results["detector"], open(metrics_file, "w"), indent=1)
        return "trained" if train else "evaluated"

    # --- VQA on the extracted regions and features ---

    def vqa_data(self):
        self.generate("vqa_data", "vqa", VQA_FOLDER, VQA_QUESTION_TYPES, self.args.vqa_counts)

    def vqa_regions(self):
        return "; ".join(self.extract(f"regions_{images}", os.path.join(self.root, VQA_FOLDER, folder),
                                      ["--input", os.path.join(self.root, VQA_FOLDER, images)], VQA_FOLDER)
                         for images, folder in REGION_FOLDERS.items())

    def vqa_eval(self):
        with warnings.catch_warnings():  # torch's deprecation notes at import, printed by every tool's log already
            warnings.simplefilter("ignore", FutureWarning)
            from vlbert_d2.data.datasets.vqa import load_annotations
            from vlbert_d2.evaluation.vqa_eval import vqa_metrics

        run_dir, text = self.evaluate("vqa", VQA_CONFIG, self.args.vqa_opts)
        results = os.path.join(run_dir, "inference", VQA_VAL, f"vqa_{VQA_VAL}_results.json")
        predictions = {r["question_id"]: r["answer"] for r in json.load(open(results))}
        annotations = load_annotations(os.path.join(self.root, VQA_FOLDER, "vqa", "v2_mscoco_val2014_annotations.json"))
        metrics = vqa_metrics(predictions, annotations)
        metrics["reported"] = copypaste_tables(text).get("vqa", {})
        metrics["num_questions"] = len(annotations)
        self.results["vqa"] = metrics

    # --- RefCOCO+ on the detector's regions, from the pixels ---

    def refcoco_data(self):
        self.generate("refcoco_data", "refcoco+", REFCOCO_FOLDER, REFCOCO_TYPES, self.args.refcoco_counts)

    def refcoco_regions(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from vlbert_d2.data import BUA_PROPOSALS
            from vlbert_d2.data.datasets.refcoco import write_proposals

        folder = os.path.join(self.root, REFCOCO_FOLDER)
        regions = os.path.join(folder, "bua_regions", "train2014")
        note = self.extract("regions_refcoco", regions, ["--input", os.path.join(folder, "train2014")],
                            REFCOCO_FOLDER, features=False)
        written = write_proposals(glob.glob(os.path.join(regions, "*.json")), os.path.join(folder, BUA_PROPOSALS))
        self.results["refcoco_proposals"] = written
        return f"{note}; {written['boxes']} regions of {written['images']} images in {BUA_PROPOSALS}" + (
            f" ({written['empty_boxes']} empty boxes left out)" if written["empty_boxes"] else "")

    def refcoco_eval(self):
        _, text = self.evaluate("refcoco", REFCOCO_CONFIG, self.args.refcoco_opts, trunk=True)
        self.results["refcoco"] = copypaste_tables(text).get("refcoco", {})

    # --- VCR from the pixels, on the dataset's boxes ---

    def vcr_data(self):
        counts = self.args.vcr_counts
        self.generate("vcr_data", "vcr", VCR_FOLDER, VCR_TYPES, counts)

    def vcr_cache(self):
        return os.path.join(self.root, VCR_FOLDER, VCR_FEATURES)

    def vcr_features(self):
        """tools/extract_features.py: the detector's trunk (VL-BERT's region extractor with
        MODEL.VLBERT.DETECTOR_WEIGHTS, stem to res5) over the VCR images, at the dataset's boxes,
        into a feature cache (resumable). The cache records the detector, the data and the
        config values that shape the features (:data:`FEATURE_KEYS`): other ones are refused."""
        cache = self.vcr_cache()
        self.stamp(cache, VCR_FOLDER)
        opts = [*self.args.vcr_opts, *self.trunk_opts(True)]  # the trunk the stamp names, whatever the options
        self.config_stamp(cache, VCR_CONFIG, opts, what="made", digest=feature_digest(VCR_CONFIG, opts))
        text = self.run("vcr_features", ["tools/extract_features.py", "--config-file", VCR_CONFIG, "--datasets",
                                         VCR_TRAIN, VCR_VAL, "--output", cache, "--batch-size", "8",
                                         "--num-workers", "1", "--no-progress", *opts])
        extracted, skipped, total = map(int, re.findall(
            r"(\d+) images extracted, (\d+) were already there, (\d+) in the datasets", text)[-1])
        return f"{extracted} images extracted, {skipped} already there, of {total}"

    def vcr_opts(self):
        return [*self.args.vcr_opts, "MODEL.VLBERT.FEATURE_CACHE", self.vcr_cache()]

    def vcr_eval(self):
        run_dir, text = self.evaluate("vcr", VCR_CONFIG, self.vcr_opts(), trunk=True)
        per_type, counts = vcr_accuracy_per_type(
            os.path.join(run_dir, "inference", VCR_VAL, "vcr_Q2A_predictions.json"),
            os.path.join(self.root, VCR_FOLDER, "val.jsonl"))
        self.results["vcr"] = {**copypaste_tables(text).get("vcr", {}), "per_type": per_type, "per_type_count": counts}

    # --- pre-training against the detector's class distributions ---

    def captions_data(self):
        self.generate("captions_data", "captions", CAPTIONS_FOLDER, CAPTION_TYPES, self.args.caption_counts)

    def captions_regions(self):
        """The detector over the captions' images (inside the zip archives: read through the
        generator's records), then {split}_bua.json: the records pointing at its files."""
        folder = os.path.join(self.root, CAPTIONS_FOLDER)
        notes = []
        for split in ("train", "val"):
            out = os.path.join(folder, "bua_regions", split)
            notes.append(self.extract(f"regions_captions_{split}", out,
                                      ["--dataset", f"synthetic_captions_pixels_gt_{split}"], CAPTIONS_FOLDER,
                                      naming="stem"))
            kept, left_out = [], []
            with open(os.path.join(folder, f"{split}_frcnn.json")) as f:
                for line in f:
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    stem = os.path.splitext(os.path.basename(record["image"].split("@/")[-1]))[0]
                    rel = os.path.join("bua_regions", split, f"{stem}.json")
                    if os.path.isfile(os.path.join(folder, rel)):
                        kept.append(json.dumps({**record, "frcnn": rel}))
                    else:  # the detector failed on it (listed in the extraction's report)
                        left_out.append(record["image"])
            with open(os.path.join(folder, f"{split}_bua.json"), "w") as f:
                f.write("\n".join(kept) + "\n")
            if left_out:
                print(f"   {split}: {len(left_out)} captions left out of {split}_bua.json (no region file): "
                      f"{left_out[:5]}", flush=True)
            self.results.setdefault("captions_left_out", {})[split] = len(left_out)
        return "; ".join(notes)

    def pretrain_eval(self):
        _, text = self.evaluate("pretrain", PRETRAIN_CONFIG, self.args.pretrain_opts, trunk=True)
        metrics = copypaste_tables(text).get("pretrain", {})
        metrics["mvrc_majority_baseline"] = self.majority_baseline("classes")
        if "mvrc_attr_acc" in metrics:
            metrics["mvrc_attr_majority_baseline"] = self.majority_baseline("attributes")
        self.results["pretrain"] = metrics

    def majority_baseline(self, field):
        """The masked-RoI accuracy of always answering the most frequent most probable entry of
        the val regions' distributions (``field``: the detector's "classes", without the
        background column, or "attributes"): what "chance" means here."""
        import numpy as np

        from vlbert_d2.data.detections import read_detection

        files = glob.glob(os.path.join(self.root, CAPTIONS_FOLDER, "bua_regions", "val", "*.json"))
        top = Counter()
        for f in files:
            values = read_detection(f)[field]
            if field == "classes":
                values = values[:, 1:]  # column 0: background
            top.update(np.argmax(values, axis=1).tolist())
        return round(100.0 * max(top.values()) / sum(top.values()), 2) if top else float("nan")

    def task_stages(self):
        """{task: [(stage name, callable), ...]}: each task's stages, in their order."""
        a = self.args
        return {
            "vqa": [("VQA data", self.vqa_data), ("VQA regions", self.vqa_regions),
                    ("VQA training", lambda: self.train("vqa", VQA_CONFIG, VQA_FOLDER, a.vqa_opts)),
                    ("VQA evaluation", self.vqa_eval)],
            "refcoco": [("RefCOCO+ data", self.refcoco_data), ("RefCOCO+ regions", self.refcoco_regions),
                        ("RefCOCO+ training", lambda: self.train("refcoco", REFCOCO_CONFIG, REFCOCO_FOLDER,
                                                                 a.refcoco_opts, True)),
                        ("RefCOCO+ evaluation", self.refcoco_eval)],
            "vcr": [("VCR data", self.vcr_data), ("VCR features", self.vcr_features),
                    ("VCR training", lambda: self.train("vcr", VCR_CONFIG, VCR_FOLDER, self.vcr_opts(), True)),
                    ("VCR evaluation", self.vcr_eval)],
            "pretrain": [("captions data", self.captions_data), ("captions regions", self.captions_regions),
                         ("pre-training", lambda: self.train("pretrain", PRETRAIN_CONFIG, CAPTIONS_FOLDER,
                                                             a.pretrain_opts, True)),
                         ("pre-training evaluation", self.pretrain_eval)],
        }

    @staticmethod
    def import_libraries():
        """Import, once, what the stages import (lazily, so that --help and the tests' import of
        this file stay light) before the tasks' threads start: two threads importing one
        package at the same time can fail (seen: KeyError: 'vlbert_d2.data')."""
        with warnings.catch_warnings():  # torch's deprecation notes at import
            warnings.simplefilter("ignore", FutureWarning)
            import detectron2.config  # noqa: F401
            import numpy  # noqa: F401

            import vlbert_d2  # noqa: F401
            import vlbert_d2.data.datasets.refcoco  # noqa: F401
            import vlbert_d2.data.datasets.vqa  # noqa: F401
            import vlbert_d2.data.detections  # noqa: F401
            import vlbert_d2.evaluation.vqa_eval  # noqa: F401

    def main(self):
        start = time.time()
        tasks = self.args.tasks
        note = bf16_note(tasks, native_bf16())
        if note:
            print(note, flush=True)
        self.import_libraries()
        self.stage("detection data", self.detection_data)
        self.stage("detector", self.detector)
        stages = self.task_stages()

        def run_task(task):
            for name, fn in stages[task]:
                self.stage(name, fn)

        if self.args.jobs == 1:
            for task in TASKS:
                if task in tasks:
                    run_task(task)
        else:
            print(f"== the tasks {', '.join(t for t in LONGEST_FIRST if t in tasks)}, {self.args.jobs} at a time, "
                  f"{self.task_threads} thread(s) each", flush=True)
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
                futures = [pool.submit(run_task, t) for t in LONGEST_FIRST if t in tasks]
                # Every task runs to its end (or failure); then the first failure is raised.
                for f in futures:
                    f.exception()
                for f in futures:
                    f.result()
        total = round(time.time() - start, 1)
        summary = {"threads": self.threads, "jobs": self.args.jobs, "task_threads": self.task_threads,
                   "tasks": list(tasks), "seconds": self.times, "total_seconds": total, **self.results}
        json.dump(summary, open(os.path.join(self.out, "summary.json"), "w"), indent=1)
        self.print_summary(summary)
        return summary

    def print_summary(self, s):
        nan = float("nan")
        print(f"\n== summary ({s['threads']} threads; the detector on all, the tasks {s['jobs']} at a time on "
              f"{s['task_threads']} each; {os.path.join(self.out, 'summary.json')})")
        bbox, attrs = s["detector"]["bbox"], s["detector"]["attributes"]
        print(f"detector ({self.weights}): AP50 {bbox.get('AP50', nan):.2f}, AP {bbox.get('AP', nan):.2f}, "
              f"colour (attribute) accuracy {attrs.get('accuracy', nan):.2f}")
        if "vqa" in s:
            print(f"VQA on the detector's regions and features ({VQA_VAL}, {s['vqa']['num_questions']} questions): "
                  f"accuracy {s['vqa']['overall']:.2f}; " + ", ".join(
                      f"{q!r} {a:.2f}" for q, a in sorted(s["vqa"]["perQuestionType"].items())))
        if "refcoco" in s:
            print(f"RefCOCO+ on the detector's regions, from the pixels ({REFCOCO_VAL}): accuracy "
                  f"{s['refcoco'].get('accuracy', nan):.2f}")
        if "vcr" in s:
            print(f"VCR on the detector trunk's features ({VCR_VAL}): Q->A {s['vcr'].get('Q2A', nan):.2f}; "
                  + ", ".join(f"{t} {a:.2f} ({s['vcr']['per_type_count'][t]})"
                              for t, a in s["vcr"]["per_type"].items()))
        if "pretrain" in s:
            p = s["pretrain"]
            print(f"pre-training ({CAPTIONS_VAL}): masked RoI accuracy {p.get('mvrc_acc', nan):.2f} "
                  f"(majority class {p['mvrc_majority_baseline']:.2f}), masked words "
                  f"{p.get('mlm_caption_acc', nan):.2f} (captions)"
                  + (f" / {p['mlm_text_acc']:.2f} (text)" if "mlm_text_acc" in p else "")
                  + (f", masked RoI attributes {p['mvrc_attr_acc']:.2f} (majority "
                     f"{p['mvrc_attr_majority_baseline']:.2f})" if "mvrc_attr_acc" in p else ""))
        for name, seconds in self.times.items():
            print(f"  {name:<24} {seconds:7.1f} s")
        print(f"  {'total':<24} {s['total_seconds']:7.1f} s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "output", "pipeline"),
                   help="output folder of the runs, logs and summary (default: output/pipeline)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                   help="the VL-BERT stages after the detector (default: all)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks run at a time after the detector, each on $OMP_NUM_THREADS / JOBS threads (default: 1)")
    p.add_argument("--detector-weights", default=None,
                   help="use this trained detector (a .pth of BUA-Tiny-Synthetic.yaml) instead of training one")
    for name, what in (("detection", "the detection data's splits"), ("vqa", "the VQA data's subsets"),
                       ("refcoco", "the RefCOCO+ data's splits"), ("vcr", "the VCR data's splits (records)"),
                       ("caption", "the captions' splits")):
        default = DEFAULT_COUNTS.get(name, [])
        p.add_argument(f"--{name}-counts", nargs="+", default=default, metavar="SPLIT=N",
                       help=f"images of {what} (default: {' '.join(default) or 'the generator' + chr(39) + 's'})")
    p.add_argument("--detector-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of the detector's config (training, evaluation and extraction)")
    for name in ("vqa", "refcoco", "vcr", "pretrain"):
        p.add_argument(f"--{name}-opts", nargs="+", default=[], metavar="KEY VALUE",
                       help=f"overrides of the {name} VL-BERT config (training and evaluation)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def main(argv=None):
    return Pipeline(parse_args(argv)).main()


if __name__ == "__main__":
    main()
