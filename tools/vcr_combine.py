#!/usr/bin/env python
"""Combine a VCR Q->A run and a QA->R run: Q->AR accuracy, or the leaderboard's test CSV.

Each run of tools/train_net.py on VCR writes inference/<dataset>/vcr_<TASK>_predictions.json.

    # validation: Q->A, QA->R and Q->AR (both right) accuracy
    python tools/vcr_combine.py --q2a out_q2a/inference/vcr_val/vcr_Q2A_predictions.json \\
        --qa2r out_qa2r/inference/vcr_val/vcr_QA2R_predictions.json
    # test: the CSV to upload (QA->R on the test split scores each rationale given each answer)
    python tools/vcr_combine.py --q2a .../vcr_test/vcr_Q2A_predictions.json \\
        --qa2r .../vcr_test/vcr_QA2R_predictions.json --csv vcr_test_submission.csv
"""
import argparse
import json

from vlbert_d2.evaluation import load_predictions, vcr_metrics, write_leaderboard_csv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q2a", required=True, help="Q->A predictions JSON")
    parser.add_argument("--qa2r", required=True, help="QA->R predictions JSON")
    parser.add_argument("--csv", help="write the leaderboard CSV here (test split predictions)")
    args = parser.parse_args(argv)
    q2a, qa2r = load_predictions(args.q2a), load_predictions(args.qa2r)
    if args.csv:
        n = write_leaderboard_csv(q2a, qa2r, args.csv)
        print(f"wrote {n} rows to {args.csv}")
    else:
        print(json.dumps(vcr_metrics(q2a, qa2r), indent=2))


if __name__ == "__main__":
    main()
