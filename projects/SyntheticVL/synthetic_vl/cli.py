"""``python -m synthetic_vl``: write one synthetic dataset (see ``--help``)."""
import argparse
import os
import time

from .captions import (CAPTION_DEFAULT_COUNTS, CAPTION_EXTRA_TYPES, CAPTION_TYPES, ensure_synthetic_captions,
                       generate_captions)
from .detection import (DETECTION_DEFAULT_COUNTS, ensure_synthetic_detection,
                        generate_detection)
from .refcoco import (REFCOCO_DEFAULT_COUNTS, REFCOCO_EXPRESSION_TYPES, ensure_synthetic_refcoco,
                      generate_refcoco)
from .vcr import DEFAULT_COUNTS, VCR_QUESTION_TYPES, ensure_synthetic_vcr, generate_vcr
from .vqa import VQA_DEFAULT_COUNTS, VQA_QUESTION_TYPES, ensure_synthetic_vqa, generate_vqa

# --format: generator, ensure function, default counts, types, and the keyword of the generator
# that receives the types (None: the format has no types).
FORMATS = {
    "vcr": (generate_vcr, ensure_synthetic_vcr, DEFAULT_COUNTS, VCR_QUESTION_TYPES,
            "question_types"),
    "vqa": (generate_vqa, ensure_synthetic_vqa, VQA_DEFAULT_COUNTS, VQA_QUESTION_TYPES,
            "question_types"),
    "refcoco+": (generate_refcoco, ensure_synthetic_refcoco, REFCOCO_DEFAULT_COUNTS,
                 REFCOCO_EXPRESSION_TYPES, "expression_types"),
    "captions": (generate_captions, ensure_synthetic_captions, CAPTION_DEFAULT_COUNTS,
                 CAPTION_TYPES, "caption_types"),
    "detection": (generate_detection, ensure_synthetic_detection, DETECTION_DEFAULT_COUNTS, (),
                  None),
}
# Types a format accepts besides its default ones (which are all drawn when none are given).
EXTRA_TYPES = {"captions": CAPTION_EXTRA_TYPES}
# Default output folder per --format: folders that vlbert_d2.data registers (under ./datasets,
# the default $DETECTRON2_DATASETS); the detection dataset is registered by projects/BottomUpAttention.
DEFAULT_ROOTS = {"vcr": "datasets/synthetic_vcr", "vqa": "datasets/synthetic_vqa",
                 "refcoco+": "datasets/synthetic_refcoco",
                 "captions": "datasets/synthetic_captions",
                 "detection": "datasets/synthetic_detection"}


def _disk_usage(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def _parse_counts(p, items, defaults):
    counts = dict(defaults)
    for item in items:
        split, sep, n = item.partition("=")
        if not sep or split not in defaults or not n.isdigit():
            p.error(f"--counts {item!r}: expected SPLIT=N with SPLIT one of {', '.join(defaults)}")
        counts[split] = int(n)
    return counts


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m synthetic_vl",
        description="Write a deterministic synthetic dataset (colored balls, boxes and kites whose "
                    "questions need the image) in the layout of an official release: VCR "
                    "({train,val,test}.jsonl plus vcr1images/<movie>/<name>.{jpg,json}), VQA v2, "
                    "RefCOCO+ (REFER), pre-training captions in the Conceptual Captions layout "
                    "plus a text corpus, or object detection with attributes (COCO instances "
                    "with attribute ids). See projects/SyntheticVL/README.md.")
    p.add_argument("--format", choices=list(FORMATS), default="vcr",
                   help="dataset format (default: %(default)s)")
    p.add_argument("--root", default=None,
                   help="output folder (default: " + ", ".join(
                       f"{v} for {k}" for k, v in DEFAULT_ROOTS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    for split, n in DEFAULT_COUNTS.items():
        # None marks "not given": these options belong to VCR, other formats refuse them.
        p.add_argument(f"--{split}", type=int, default=None,
                       help=f"VCR {split} records (default: {n})")
    p.add_argument("--counts", nargs="+", default=[], metavar="SPLIT=N",
                   help="images (vcr: records) per split; splits not named keep their defaults "
                        "(" + "; ".join(f"{k}: " + " ".join(f"{s}={n}" for s, n in v[2].items())
                                        for k, v in FORMATS.items()) + ")")
    p.add_argument("--image-size", type=int, nargs=2, default=(192, 128), metavar=("W", "H"),
                   help="image width and height (default: 192 128)")
    p.add_argument("--question-types", nargs="+", default=None, metavar="TYPE",
                   help="question types (refcoco+: expression types, captions: sentence types) to "
                        "draw from, default all ("
                        + "; ".join(f"{k}: {' '.join(v[3])}" for k, v in FORMATS.items() if v[3])
                        + "; detection has none; captions also accept: "
                        + " ".join(CAPTION_EXTRA_TYPES) + ")")
    p.add_argument("--questions-per-image", type=int, default=None,
                   help="vqa only: questions per image, of distinct types (default: 2)")
    p.add_argument("--force", action="store_true",
                   help="regenerate even if a complete dataset exists")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)

    generate, ensure, defaults, known, types_key = FORMATS[args.format]
    if args.format != "vcr":
        given = [f"--{s}" for s in DEFAULT_COUNTS if getattr(args, s) is not None]
        if given:
            p.error(f"{'/'.join(given)} are VCR options; for {args.format} use --counts "
                    f"with splits {', '.join(defaults)}")
    if args.questions_per_image is not None and args.format != "vqa":
        p.error("--questions-per-image is a vqa option")
    if args.question_types and types_key is None:
        p.error(f"--question-types: {args.format} has no types")
    counts = _parse_counts(p, args.counts, defaults)
    for split in DEFAULT_COUNTS if args.format == "vcr" else ():
        if getattr(args, split) is not None:
            counts[split] = getattr(args, split)
    types = tuple(args.question_types or known)
    allowed = tuple(known) + EXTRA_TYPES.get(args.format, ())
    unknown = [t for t in types if t not in allowed]
    if unknown:
        p.error(f"--question-types {' '.join(unknown)}: not a {args.format} type "
                f"(choose from {', '.join(allowed)})")
    root = args.root or DEFAULT_ROOTS[args.format]
    kwargs = {"counts": counts, "seed": args.seed, "image_size": tuple(args.image_size)}
    if types_key is not None:
        kwargs[types_key] = types
    if args.questions_per_image is not None:
        kwargs["questions_per_image"] = args.questions_per_image

    start = time.time()
    if args.force:
        generate(root, **kwargs)
    elif not ensure(root, **kwargs):
        print(f"{root} is already complete; use --force to regenerate")
        return
    if args.format == "vcr":
        for split, n in counts.items():
            print(f"wrote {n} records to {os.path.join(root, split + '.jsonl')}")
        print(f"images under {os.path.join(root, 'vcr1images')}; "
              f"{_disk_usage(root) / 2**20:.1f} MiB in {time.time() - start:.1f} s")
    else:
        for split, n in counts.items():
            print(f"wrote {n} {args.format} {split} images")
        print(f"{args.format} dataset under {root}; "
              f"{_disk_usage(root) / 2**20:.1f} MiB in {time.time() - start:.1f} s")
