#!/usr/bin/env python
"""Convert an official VL-BERT checkpoint (jackroos/VL-BERT) for this project.

    python tools/convert_vlbert_checkpoint.py vl-bert-base-e2e.model vlbert_base_e2e.pth \\
        --config-file configs/VLBERT-Base-VCR.yaml [KEY VALUE ...]
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml MODEL.WEIGHTS vlbert_base_e2e.pth

Reads ``torch.load(path, weights_only=True)["state_dict"]`` (tensors only: a file asking for
anything else is refused, never run; keys with or without ``module.``, float16 or 32),
renames every key it knows, casts to float32, and writes ``{"model": state_dict}``, which
``MODEL.WEIGHTS`` (fine-tuning or --eval-only) accepts. Every official key it did not map is
listed. With --config-file (before or after the two paths; KEY VALUE config overrides anywhere
after them) it also builds that model and fails on any shape mismatch, starts the task head
from the pre-training heads as the official fine-tuning configs do (VQA: the MLM transform;
RefCOCO+: the masked-RoI transform; VCR: the masked-RoI transform into the RoI classifier), and
lists the model's parameters the checkpoint does not fill (they keep their initialisation:
e.g. the pooler and the task classifier when starting from a pre-trained model).
"""
import argparse
import sys

import torch

from vlbert_d2.checkpoint import ConversionError, convert_official_state_dict


def load_official(path):
    """The state dict of an official checkpoint file; errors name the file.

    Read with ``torch.load(weights_only=True)``: tensors, containers, numbers and strings only,
    so a file that asks for anything else (which could run code) is refused, not executed.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"{path}: file not found") from None
    except Exception as e:  # pickle and zip errors come in many types
        raise SystemExit(f"{path}: cannot read it as a PyTorch checkpoint of tensors "
                         f"(weights_only=True): {type(e).__name__}: {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise SystemExit(f"{path}: expected a dict with a 'state_dict' of tensors (the official format)")
    return obj


def model_shapes(config_file, opts):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.config import finalize_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu"])
    finalize_vlbert_config(cfg)  # the sizes the model is built with, as training works them out
    return {k: v.shape for k, v in build_model(cfg).state_dict().items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official checkpoint (.model / .pth)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument("--config-file", help="check shapes against the model of this config "
                        "(and start its task head from the pre-training heads)")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides (with --config-file), e.g. MODEL.VLBERT.BERT_NAME ''")
    # Intermixed: `IN OUT --config-file CFG KEY VALUE` (the documented order) and
    # `--config-file CFG IN OUT KEY VALUE` both work; argparse.REMAINDER would swallow the flag.
    args = parser.parse_intermixed_args(argv)
    if args.opts and not args.config_file:
        parser.error(f"config overrides {args.opts} need --config-file")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {len(args.opts)} words: {args.opts}")

    state_dict = load_official(args.input)
    shapes = model_shapes(args.config_file, args.opts) if args.config_file else None
    try:
        converted, report = convert_official_state_dict(state_dict, shapes)
    except ConversionError as e:
        raise SystemExit(f"{args.input}: {e}") from None
    print(f"{args.input}: {len(state_dict)} entries: {report.summary()}")
    if shapes is None:
        print("  no --config-file: shapes not checked, and no task head started from the pre-training heads")
    else:
        print(f"  every converted tensor has the shape of the model of {args.config_file}")
        for official, ours in report.mapped.items():
            if "_head." in official and ours.startswith(("head.transform.", "head.roi_classifier.")):
                print(f"  task head from pre-training: {official} -> {ours}")
    for key in report.unmapped:
        print(f"  unmapped (no parameter for it in this project): {key}")
    if shapes is not None:
        for key in sorted(set(shapes) - set(converted)):
            print(f"  not in the checkpoint (keeps its initialisation): {key}")
    torch.save({"model": converted, "__author__": "vlbert_d2 tools/convert_vlbert_checkpoint.py",
                "unmapped": report.unmapped}, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
