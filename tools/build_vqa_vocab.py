#!/usr/bin/env python
"""Build the VQA answer vocabulary from training annotations, the usual way: the normalised
``multiple_choice_answer`` values given at least --min-count times (9 on train2014 + val2014
gives the 3,129 answers of BUTD and VL-BERT), most frequent first.

    python tools/build_vqa_vocab.py datasets/coco/vqa/v2_mscoco_train2014_annotations.json \\
        datasets/coco/vqa/v2_mscoco_val2014_annotations.json -o datasets/coco/vqa/answers_vqa.txt

tools/train_net.py builds the registered datasets' vocabulary this way when it is missing.
"""
import argparse
import os
import sys

from vlbert_d2.data.datasets.vqa import build_answer_vocab
from vlbert_d2.text.answer_vocab import ANSWER_MIN_COUNT, write_answer_vocab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("annotations", nargs="+", help="v2_mscoco_*_annotations.json files")
    p.add_argument("-o", "--output", required=True, help="vocabulary file to write (one answer per line)")
    p.add_argument("--min-count", type=int, default=ANSWER_MIN_COUNT,
                   help="keep answers given at least this many times (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = p.parse_args(argv)
    if os.path.exists(args.output) and not args.force:
        raise SystemExit(f"{args.output} exists; --force overwrites it")
    vocab = build_answer_vocab(args.annotations, args.min_count)
    if not vocab:
        raise SystemExit(f"no answer is given {args.min_count} times in {args.annotations}")
    write_answer_vocab(args.output, vocab)
    print(f"wrote {len(vocab)} answers to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
