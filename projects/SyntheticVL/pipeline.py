#!/usr/bin/env python
"""The paper's whole pipeline in miniature, on CPU (make demo-pipeline): a bottom-up-attention
detector trained on the synthetic scenes, its regions (with their pooled features) extracted
for a VQA dataset of colour and shape questions, and a tiny VL-BERT trained on those regions.

Stages (each a command, printed; finished ones are skipped on a rerun, so an interrupted
pipeline resumes where it stopped):

1. detection data: ``python -m synthetic_vl --format detection`` (<datasets>/synthetic_detection)
2. detector: projects/BottomUpAttention/train_detector.py with BUA-Tiny-Synthetic.yaml (skipped
   when <out>/detector/model_final.pth exists, or with --detector-weights), then its box AP and
   attribute (colour) accuracy on synthetic_detection_val
3. VQA data: ``python -m synthetic_vl --format vqa --question-types color shape``
   (<datasets>/synthetic_vqa_pixels)
4. regions: tools/extract_regions.py --features over its train2014/val2014/test2015 images into
   <datasets>/synthetic_vqa_pixels/bua_regions/{trainval2014,test2015} (the folders that the
   synthetic_vqa_pixels_* datasets read; the generator's ground-truth detection files stay
   where they are). Images already extracted are skipped; a folder written by another detector
   is refused (its weights' hash is recorded in the folder).
5. VL-BERT: tools/train_net.py with VLBERT-Tiny-PipelineVQA.yaml (MODEL.VLBERT.DETECTION_FEATURES:
   the RoI features are the detector's; skipped when <out>/vqa/model_final.pth exists)
6. evaluation: tools/train_net.py --eval-only on the saved model; VQA accuracy per question type.

Then a summary: the detector's AP50 and colour accuracy, the VQA accuracy per question type, the
wall time of each stage (also in <out>/summary.json). The datasets root is $DETECTRON2_DATASETS
(default ./datasets); the threads, $OMP_NUM_THREADS.

Example:
    python projects/SyntheticVL/pipeline.py    # about 7 minutes on one CPU thread (418 s measured)
    python projects/SyntheticVL/pipeline.py --detector-weights path/to/model_final.pth
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

# projects/SyntheticVL/pipeline.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETECTOR_CONFIG = "projects/BottomUpAttention/configs/BUA-Tiny-Synthetic.yaml"
VQA_CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelineVQA.yaml"
VQA_FOLDER = "synthetic_vqa_pixels"
VQA_QUESTION_TYPES = ("color", "shape")
# Image folder -> region folder (vlbert_d2/data/__init__.py: _BUA_REGIONS).
REGION_FOLDERS = {"train2014": "bua_regions/trainval2014", "val2014": "bua_regions/trainval2014",
                  "test2015": "bua_regions/test2015"}
VQA_VAL = "synthetic_vqa_pixels_val2014"
_STAMP = "DETECTOR_SHA256"


def copypaste_tables(text):
    """Every metrics table detectron2 printed ("copypaste: Task: X", names, values): {task: {name: value}}."""
    lines = re.findall(r"copypaste: (.*)", text)
    tables = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: ") and i + 2 < len(lines):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            tables[line[len("Task: "):].strip()] = {n: float(v) for n, v in zip(names, values)}
    return tables


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Pipeline:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.root = os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
        self.env = dict(os.environ, DETECTRON2_DATASETS=self.root)
        self.times = {}
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)

    def run(self, name, cmd):
        """Run ``cmd`` (a list; python scripts relative to the repository), its output to a log;
        returns the output. Fails the pipeline with the log's end when the command fails."""
        cmd = [sys.executable, *cmd]
        log = os.path.join(self.out, "logs", f"{name}.log")
        print("$ " + " ".join(cmd[1:]), flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
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

    # --- the stages ---

    def detection_data(self):
        counts = ["--counts", *self.args.detection_counts] if self.args.detection_counts else []
        self.run("detection_data", ["-m", "synthetic_vl", "--format", "detection", "--root",
                                    os.path.join(self.root, "synthetic_detection"), "--seed", str(self.args.seed),
                                    *counts])

    def detector(self):
        metrics_file = os.path.join(self.out, "detector_metrics.json")
        if self.args.detector_weights:
            self.weights = os.path.abspath(self.args.detector_weights)
            run_dir, train = None, False
        else:
            run_dir = os.path.join(self.out, "detector")
            self.weights = os.path.join(run_dir, "model_final.pth")
            train = not os.path.isfile(self.weights)
        if not train and not os.path.isfile(self.weights):
            raise SystemExit(f"--detector-weights: file not found: {self.weights}")
        known = json.load(open(metrics_file)) if os.path.isfile(metrics_file) else {}
        if not train and known.get("weights_sha256") == sha256(self.weights):
            self.detector_metrics = known
            return "done before: skipped"
        run_dir = run_dir if train else os.path.join(self.out, "detector_eval")
        tool = ["projects/BottomUpAttention/train_detector.py", "--config-file", DETECTOR_CONFIG]
        if train:
            text = self.run("detector", [*tool, *self.resume(run_dir), "OUTPUT_DIR", run_dir, "SEED",
                                         str(self.args.seed), *self.args.detector_opts])
        else:  # given or trained before: evaluated once
            text = self.run("detector_eval", [*tool, "--eval-only", "MODEL.WEIGHTS", self.weights,
                                              "OUTPUT_DIR", run_dir, *self.args.detector_opts])
        tables = copypaste_tables(text)
        self.detector_metrics = {"weights": self.weights, "weights_sha256": sha256(self.weights),
                                 "bbox": tables.get("bbox", {}), "attributes": tables.get("attributes", {})}
        json.dump(self.detector_metrics, open(metrics_file, "w"), indent=1)
        return "trained" if train else "evaluated"

    def vqa_data(self):
        counts = ["--counts", *self.args.vqa_counts] if self.args.vqa_counts else []
        self.run("vqa_data", ["-m", "synthetic_vl", "--format", "vqa", "--root", os.path.join(self.root, VQA_FOLDER),
                              "--seed", str(self.args.seed), "--question-types", *VQA_QUESTION_TYPES, *counts])

    def regions(self):
        digest, notes = sha256(self.weights), []
        for images, folder in REGION_FOLDERS.items():
            output = os.path.join(self.root, VQA_FOLDER, folder)
            stamp = os.path.join(output, _STAMP)
            if os.path.isfile(stamp) and open(stamp).read().strip() != digest:
                raise SystemExit(f"{output}: extracted by another detector ({stamp}); remove the folder to "
                                 "extract the regions of this one")
            os.makedirs(output, exist_ok=True)
            with open(stamp, "w") as f:
                f.write(digest + "\n")
            text = self.run(f"regions_{images}", [
                "tools/extract_regions.py", "--input", os.path.join(self.root, VQA_FOLDER, images),
                "--output", output, "--config-file", DETECTOR_CONFIG, "--weights", self.weights, "--features",
                "--file-names", "image_id", "--device", "cpu", "--batch-size", "8", "--num-workers", "1",
                "--no-progress", *self.args.detector_opts])
            found = re.findall(r"(\d+) images; (\d+) written, (\d+) already there, (\d+) failed", text)
            total, written, skipped, failed = map(int, found[-1])
            notes.append(f"{images}: {written} written, {skipped} already there, {failed} failed")
            if failed:
                # Kept apart: the next subset's extraction into the same folder rewrites the report.
                report = os.path.join(self.out, "logs", f"failed_images_{images}.tsv")
                shutil.copyfile(os.path.join(output, "failed_images.tsv"), report)
                print(f"   {images}: {failed} images failed (no region, unreadable...), listed in {report}; "
                      "their questions cannot be loaded", flush=True)
        return "; ".join(notes)

    def vqa_train(self):
        run_dir = os.path.join(self.out, "vqa")
        if os.path.isfile(os.path.join(run_dir, "model_final.pth")):
            return "done before: skipped"
        self.run("vqa_train", ["tools/train_net.py", "--config-file", VQA_CONFIG, *self.resume(run_dir),
                               "OUTPUT_DIR", run_dir, "SEED", str(self.args.seed), *self.args.vqa_opts])
        return None

    def vqa_eval(self):
        with warnings.catch_warnings():  # torch's deprecation notes at import, printed by every tool's log already
            warnings.simplefilter("ignore", FutureWarning)
            from vlbert_d2.data.datasets.vqa import load_annotations
            from vlbert_d2.evaluation.vqa_eval import vqa_metrics

        run_dir = os.path.join(self.out, "vqa_eval")
        text = self.run("vqa_eval", ["tools/train_net.py", "--config-file", VQA_CONFIG, "--eval-only",
                                     "MODEL.WEIGHTS", os.path.join(self.out, "vqa", "model_final.pth"),
                                     "OUTPUT_DIR", run_dir, *self.args.vqa_opts])
        results = os.path.join(run_dir, "inference", VQA_VAL, f"vqa_{VQA_VAL}_results.json")
        predictions = {r["question_id"]: r["answer"] for r in json.load(open(results))}
        annotations = load_annotations(os.path.join(self.root, VQA_FOLDER, "vqa",
                                                    "v2_mscoco_val2014_annotations.json"))
        self.vqa_metrics = vqa_metrics(predictions, annotations)
        self.vqa_metrics["reported"] = copypaste_tables(text).get("vqa", {})
        self.vqa_metrics["num_questions"] = len(annotations)
        return None

    def main(self):
        start = time.time()
        self.stage("detection data", self.detection_data)
        self.stage("detector", self.detector)
        self.stage("VQA data", self.vqa_data)
        self.stage("regions", self.regions)
        self.stage("VL-BERT VQA training", self.vqa_train)
        self.stage("VL-BERT VQA evaluation", self.vqa_eval)
        total = round(time.time() - start, 1)
        summary = {"threads": os.getenv("OMP_NUM_THREADS"), "seconds": self.times, "total_seconds": total,
                   "detector": self.detector_metrics, "vqa": self.vqa_metrics}
        json.dump(summary, open(os.path.join(self.out, "summary.json"), "w"), indent=1)
        bbox, attrs = self.detector_metrics["bbox"], self.detector_metrics["attributes"]
        print(f"\n== summary (OMP_NUM_THREADS={summary['threads']}; {os.path.join(self.out, 'summary.json')})")
        print(f"detector ({self.weights}): AP50 {bbox.get('AP50', float('nan')):.2f}, AP "
              f"{bbox.get('AP', float('nan')):.2f}, colour (attribute) accuracy "
              f"{attrs.get('accuracy', float('nan')):.2f}")
        print(f"VQA on the detector's regions ({VQA_VAL}, {self.vqa_metrics['num_questions']} questions): "
              f"accuracy {self.vqa_metrics['overall']:.2f}")
        for qtype, acc in sorted(self.vqa_metrics["perQuestionType"].items()):
            print(f"  {qtype!r}: {acc:.2f}")
        for name, seconds in self.times.items():
            print(f"  {name:<24} {seconds:7.1f} s")
        print(f"  {'total':<24} {total:7.1f} s")
        return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "output", "pipeline"),
                   help="output folder of the runs, logs and summary (default: output/pipeline)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--detector-weights", default=None,
                   help="use this trained detector (a .pth of BUA-Tiny-Synthetic.yaml) instead of training one")
    p.add_argument("--detection-counts", nargs="+", default=[], metavar="SPLIT=N",
                   help="images of the detection data's splits (default: the generator's)")
    p.add_argument("--vqa-counts", nargs="+", default=[], metavar="SPLIT=N",
                   help="images of the VQA data's subsets (default: the generator's)")
    p.add_argument("--detector-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of the detector's config (training, evaluation and extraction)")
    p.add_argument("--vqa-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of the VL-BERT config (training and evaluation)")
    return p.parse_args(argv)


def main(argv=None):
    return Pipeline(parse_args(argv)).main()


if __name__ == "__main__":
    main()
