#!/usr/bin/env python
"""A miniature of the paper's pre-training ablation (Table 4) on the synthetic data, on CPU.

For each seed: pre-train the tiny model on the synthetic captions + text corpus
(configs/quick_schedules/VLBERT-Tiny-SyntheticPretrain.yaml), then fine-tune it on a small
fraction of the synthetic VQA training set (configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml,
DATALOADER.TRAIN_FRACTION); and fine-tune the same way from the BERT-only initialisation (no
MODEL.WEIGHTS). Reports the VQA accuracy on the synthetic val split: per seed, mean and
standard deviation. Every run is a tools/train_net.py command (printed); finished runs are
reused, so an interrupted study resumes where it stopped.

The data: `make data-captions data-vqa` (python -m synthetic_vl --format captions / --format vqa,
see projects/SyntheticVL/README.md). Run from anywhere; paths are relative to the repository.

Example (`make ablation-pretrain`):
    python projects/SyntheticVL/pretrain_ablation.py --seeds 0 1 2 --fraction 0.1 \
        --finetune-iters 150
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

# projects/SyntheticVL/pretrain_ablation.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = "configs/quick_schedules/VLBERT-Tiny-SyntheticPretrain.yaml"
FINETUNE = "configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml"


def _run(args, log):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args]
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"run failed (exit {proc.returncode}); see {log}")
    print(f"  done in {time.time() - start:.0f} s (log: {log})", flush=True)


def _final_metrics(log):
    """The last copypaste table of a train_net log: {name: value}."""
    lines = re.findall(r"copypaste: (.*)", open(log).read())
    names, values = lines[-2].split(","), [float(v) for v in lines[-1].split(",")]
    return dict(zip(names, values))


def _all_tables(log):
    lines = re.findall(r"copypaste: (.*)", open(log).read())
    return [dict(zip(lines[i + 1].split(","), map(float, lines[i + 2].split(","))))
            for i in range(0, len(lines) - 2, 3)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="share of the synthetic VQA training questions used for fine-tuning "
                        "(default: 0.1)")
    p.add_argument("--finetune-iters", type=int, default=150,
                   help="fine-tuning iterations (default: 150)")
    p.add_argument("--pretrain-iters", type=int, default=600,
                   help="pre-training iterations (default: 600)")
    p.add_argument("--out", default="output/pretrain_ablation",
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)

    out = os.path.join(REPO, args.out) if not os.path.isabs(args.out) else args.out
    os.makedirs(out, exist_ok=True)
    results = {"fraction": args.fraction, "finetune_iters": args.finetune_iters,
               "pretrain_iters": args.pretrain_iters, "runs": {}}
    for seed in args.seeds:
        pre_dir = os.path.join(out, f"pretrain_seed{seed}")
        if not os.path.isfile(os.path.join(pre_dir, "model_final.pth")):
            _run(["--config-file", PRETRAIN, "SEED", str(seed),
                  "SOLVER.MAX_ITER", str(args.pretrain_iters),
                  "TEST.EVAL_PERIOD", str(args.pretrain_iters), "OUTPUT_DIR", pre_dir],
                 os.path.join(out, f"pretrain_seed{seed}.log"))
        pre_metrics = _all_tables(os.path.join(out, f"pretrain_seed{seed}.log"))
        pretrained = os.path.join(pre_dir, "model_final.pth")
        for init, weights in (("pretrained", pretrained), ("bert_only", "")):
            run_dir = os.path.join(out, f"finetune_{init}_seed{seed}")
            log = run_dir + ".log"
            done = os.path.isfile(log) and os.path.isfile(os.path.join(run_dir, "model_final.pth"))
            if not done:
                _run(["--config-file", FINETUNE, "SEED", str(seed), "MODEL.WEIGHTS", weights,
                      "DATALOADER.TRAIN_FRACTION", str(args.fraction),
                      "SOLVER.MAX_ITER", str(args.finetune_iters),
                      "SOLVER.CHECKPOINT_PERIOD", str(args.finetune_iters),
                      "TEST.EVAL_PERIOD", str(args.finetune_iters), "OUTPUT_DIR", run_dir], log)
            m = _final_metrics(log)
            results["runs"][f"{init}_seed{seed}"] = {"seed": seed, "init": init,
                                                    "vqa_accuracy": m["accuracy"],
                                                    "metrics": m, "pretrain_metrics": pre_metrics}
            print(f"seed {seed} {init}: VQA accuracy {m['accuracy']:.2f}", flush=True)

    summary = {}
    for init in ("pretrained", "bert_only"):
        runs = [r for r in results["runs"].values() if r["init"] == init]
        accs = [r["vqa_accuracy"] for r in runs]
        summary[init] = {"mean": statistics.mean(accs),
                         "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "per_seed": accs}
        for kind in ("number", "yes/no", "other"):  # count, "more than 3?", "which side has more?"
            summary[init][kind] = statistics.mean(r["metrics"][kind] for r in runs)
    acc = {name: run["vqa_accuracy"] for name, run in results["runs"].items()}
    wins = sum(acc[f"pretrained_seed{s}"] > acc[f"bert_only_seed{s}"] for s in args.seeds)
    summary["pretrained_better_seeds"] = wins
    results["summary"] = summary
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n| initialisation | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean ± std | number | yes/no | other |")
    print("|---|" + "---|" * len(args.seeds) + "---|---|---|---|")
    for init, name in (("pretrained", "synthetic pre-training"), ("bert_only", "BERT only")):
        s = summary[init]
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in s["per_seed"])
              + f" | {s['mean']:.2f} ± {s['std']:.2f}"
              f" | {s['number']:.2f} | {s['yes/no']:.2f} | {s['other']:.2f} |")
    print(f"\npre-training better on {wins} of {len(args.seeds)} seeds")
    print(f"\nresults: {os.path.join(out, 'results.json')}")


if __name__ == "__main__":
    main()
