#!/usr/bin/env python
"""The paper's pre-training ablation (Table 4) repeated on the pipeline's regions (make
ablation-pipeline): does pre-training against the detector's regions help fine-tuning?

It starts where make demo-pipeline (projects/SyntheticVL/pipeline.py) ended: its pre-trained
model (<pipeline>/pretrain/model_final.pth: masked words and masked RoIs on the detector's
regions), its detector and the regions it extracted. For each seed it fine-tunes twice on a
small share of a task's training set (DATALOADER.TRAIN_FRACTION), once from the pre-trained
model and once from the BERT-only initialisation (no MODEL.WEIGHTS), everything else equal
(the seed draws the share, the new layers' initialisation and the batches):

  vqa       colour and shape questions on the detector's features (VLBERT-Tiny-PipelineVQA.yaml):
            VQA accuracy per question type
  refcoco   "the red kite" among the detector's regions, from the pixels with the detector's trunk
            (VLBERT-Tiny-PipelineRefCOCO+.yaml, 16 expressions a batch): accuracy at IoU >= 0.5
            (grounding)

Reported per task and question type: each init's mean over the seeds, the paired gain
(pre-trained minus BERT only, seed by seed), its mean, its standard error (sd / sqrt(n)) and
whether the mean is at least twice the standard error. The pre-trained model is the same for
every seed (one pre-training); the seeds vary the fine-tuning. Every run is a
tools/train_net.py command (printed, logged); finished runs are reused, so an interrupted study
resumes. Each run uses --threads CPU threads (default 1; results depend on it in the last bits),
--jobs runs at a time (default 2: the tiny runs use two cores better side by side than one run
on both).

Example:
    make demo-pipeline && make ablation-pipeline
    python projects/SyntheticVL/pipeline_ablation.py --seeds 0 1 2 3 4 --tasks vqa refcoco
"""
import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline  # noqa: E402  (the pipeline's constants and helpers)

REPO = pipeline.REPO
FINETUNE = {"vqa": pipeline.VQA_CONFIG, "refcoco": pipeline.REFCOCO_CONFIG}
DEFAULT_FRACTION = {"vqa": 0.05, "refcoco": 0.1}
DEFAULT_ITERS = {"vqa": 150, "refcoco": 100}


def paired(pre, base):
    """Mean, standard error and count of the paired differences ``pre - base``."""
    diffs = [a - b for a, b in zip(pre, base)]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return mean, se


def holds(gain, se):
    """Whether the gain is at least twice its standard error; None with one seed (no SE)."""
    return None if math.isnan(se) else bool(gain >= 2 * se)


def verdict(gain, se):
    """The table's last column: yes, no, or n/a with one seed."""
    return {True: "yes", False: "no", None: "n/a (one seed: no SE)"}[holds(gain, se)]


class Ablation:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.pipeline_out = os.path.abspath(args.pipeline)
        self.root = os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
        self.env = dict(os.environ, DETECTRON2_DATASETS=self.root, OMP_NUM_THREADS=str(args.threads))
        self.pretrained = os.path.join(self.pipeline_out, "pretrain", "model_final.pth")
        self.detector = os.path.join(self.pipeline_out, "detector", "model_final.pth")
        for path in (self.pretrained, self.detector):
            if not os.path.isfile(path):
                raise SystemExit(f"{path}: not found; run the pipeline first (make demo-pipeline, or "
                                 f"projects/SyntheticVL/pipeline.py --out {self.pipeline_out})")
        os.makedirs(self.out, exist_ok=True)

    def run(self, name, args):
        import subprocess

        log = os.path.join(self.out, f"{name}.log")
        cmd = [sys.executable, "tools/train_net.py", *args]
        print("$ " + " ".join(cmd[1:]), flush=True)
        start = time.time()
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise SystemExit(f"{name}: failed (exit {proc.returncode}); see {log}")
        print(f"  {name}: {time.time() - start:.0f} s (log: {log})", flush=True)
        return open(log).read()

    def finetune(self, task, seed, init):
        """One fine-tuning run and its evaluation; returns {metric: value} (cached in results.json
        of its folder)."""
        name = f"{task}_{init}_seed{seed}"
        run_dir = os.path.join(self.out, name)
        result_file = os.path.join(run_dir, "ablation_result.json")
        if os.path.isfile(result_file):
            return json.load(open(result_file))
        a = self.args
        iters = getattr(a, f"{task}_iters")
        opts = ["SEED", str(seed), "MODEL.WEIGHTS", self.pretrained if init == "pretrained" else "",
                "DATALOADER.TRAIN_FRACTION", str(getattr(a, f"{task}_fraction")), "SOLVER.MAX_ITER", str(iters),
                "SOLVER.CHECKPOINT_PERIOD", str(iters), "TEST.EVAL_PERIOD", str(iters), "OUTPUT_DIR", run_dir,
                *pipeline.RUN_OPTS[task]]  # the pipeline's loader setting (the same batches)
        if task == "refcoco":  # the detector's trunk (the pre-trained model carries it too), 16 a batch
            opts += ["MODEL.VLBERT.DETECTOR_WEIGHTS", self.detector, "SOLVER.IMS_PER_BATCH", "16",
                     "SOLVER.WARMUP_ITERS", str(min(30, iters // 5))]
        text = self.run(name, ["--config-file", FINETUNE[task], *opts])
        if task == "vqa":
            result = self.vqa_result(run_dir)
        else:
            result = {"accuracy": pipeline.copypaste_tables(text)["refcoco"]["accuracy"]}
        json.dump(result, open(result_file, "w"), indent=1)
        return result

    def vqa_result(self, run_dir):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from vlbert_d2.data.datasets.vqa import load_annotations
            from vlbert_d2.evaluation.vqa_eval import vqa_metrics

        val = pipeline.VQA_VAL
        results = os.path.join(run_dir, "inference", val, f"vqa_{val}_results.json")
        predictions = {r["question_id"]: r["answer"] for r in json.load(open(results))}
        annotations = load_annotations(os.path.join(self.root, pipeline.VQA_FOLDER, "vqa",
                                                    "v2_mscoco_val2014_annotations.json"))
        m = vqa_metrics(predictions, annotations)
        return {"overall": m["overall"], **{q: a for q, a in m["perQuestionType"].items()}}

    def main(self):
        a = self.args
        keys = [(task, init, seed) for seed in a.seeds for task in a.tasks for init in ("pretrained", "bert_only")]
        runs = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
            futures = {key: pool.submit(self.finetune, key[0], key[2], key[1]) for key in keys}
            for key in keys:  # in order, as they finish
                runs[key] = futures[key].result()
                shown = ", ".join(f"{k} {v:.2f}" for k, v in runs[key].items())
                print(f"seed {key[2]} {key[0]} {key[1]}: {shown}", flush=True)
        summary = {"threads_per_run": a.threads, "jobs": a.jobs, "seeds": a.seeds, "pretrained": self.pretrained,
                   "settings": {t: {"fraction": getattr(a, f"{t}_fraction"), "iters": getattr(a, f"{t}_iters")}
                                for t in a.tasks},
                   "tasks": {}}
        for task in a.tasks:
            metrics = list(runs[(task, "pretrained", a.seeds[0])])
            rows = {}
            for metric in metrics:
                pre = [runs[(task, "pretrained", s)][metric] for s in a.seeds]
                base = [runs[(task, "bert_only", s)][metric] for s in a.seeds]
                gain, se = paired(pre, base)
                rows[metric] = {"pretrained": pre, "bert_only": base, "pretrained_mean": statistics.mean(pre),
                                "bert_only_mean": statistics.mean(base), "gain": gain, "se": se,
                                "holds": holds(gain, se)}
            summary["tasks"][task] = rows
        json.dump(summary, open(os.path.join(self.out, "results.json"), "w"), indent=1)
        print(f"\n== pre-training ablation ({a.threads} thread(s) per run, seeds {a.seeds}; "
              f"{os.path.join(self.out, 'results.json')})")
        print("| task | measure | pre-trained | BERT only | paired gain +- SE | gain >= 2 SE |")
        print("|---|---|---|---|---|---|")
        for task, rows in summary["tasks"].items():
            for metric, r in rows.items():
                print(f"| {task} | {metric} | {r['pretrained_mean']:.2f} | {r['bert_only_mean']:.2f} | "
                      f"{r['gain']:+.2f} +- {r['se']:.2f} | {verdict(r['gain'], r['se'])} |")
        return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default=os.path.join(REPO, "output", "pipeline"),
                   help="the pipeline's output folder (default: output/pipeline)")
    p.add_argument("--out", default=os.path.join(REPO, "output", "pipeline_ablation"),
                   help="output folder (default: output/pipeline_ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default: 1)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--tasks", nargs="+", choices=list(FINETUNE), default=list(FINETUNE),
                   help="fine-tuning tasks (default: vqa refcoco)")
    for task in FINETUNE:
        p.add_argument(f"--{task}-fraction", type=float, default=DEFAULT_FRACTION[task],
                       help=f"share of the {task} training set (default: {DEFAULT_FRACTION[task]})")
        p.add_argument(f"--{task}-iters", type=int, default=DEFAULT_ITERS[task],
                       help=f"{task} fine-tuning iterations (default: {DEFAULT_ITERS[task]})")
    return p.parse_args(argv)


def main(argv=None):
    return Ablation(parse_args(argv)).main()


if __name__ == "__main__":
    main()
