#!/usr/bin/env python
"""What a pre-trained model reads from the regions: masked-word accuracy per kind of word.

The pre-training evaluation's masked-word accuracy mixes every word the random masking picks,
most of them words the text alone gives ("the", "at", "is"). This probe masks, in each caption,
every word of one kind at once and counts how many the model's masked-language-modelling head
gets right:

  colour    red, green, blue, yellow, purple, orange (the synthetic palette; chance 1/6)
  biggest   the colour in "the biggest object is a [MASK] box" (what VQA's colour question asks)
  shape     ball, box, kite (chance 1/3)
  place     top, bottom, left, right

No region is masked, the rest of the caption is whole; the inputs are otherwise the pre-training
evaluation's (the config's mapper, its detection files and features).

Example (on make demo-pipeline's output):
    DETECTRON2_DATASETS=datasets python projects/SyntheticVL/masked_word_probe.py \\
        --weights output/pipeline/pretrain/model_final.pth \\
        MODEL.VLBERT.DETECTOR_WEIGHTS output/pipeline/detector/model_final.pth
"""
import argparse
import json
import os
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/quick_schedules/VLBERT-Tiny-PipelinePretrain.yaml"


def word_kinds():
    from synthetic_vl.scenes import PALETTE, QUADRANTS, SHAPES

    colours = set(PALETTE)
    return {"colour": colours, "biggest": colours, "shape": set(SHAPES),
            "place": {w for q in QUADRANTS for w in q}}


def mask_kind(x, kind, words, tokenizer):
    """Masks, in the mapped caption ``x`` (one row), every word piece of ``kind``; returns the
    number masked. Its ``mlm_labels`` get the original ids there, -1 elsewhere."""
    import torch

    ids = x["input_ids"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    labels = torch.full_like(x["mlm_labels"], -1)
    for i, t in enumerate(tokens):
        if t not in words or not x["text_mask"][0, i]:
            continue
        if kind == "biggest" and tokens[max(i - 3, 0):i - 1] != ["object", "is"]:
            continue
        labels[0, i] = ids[i]
        ids[i] = tokenizer.mask_token_id
    x["mlm_labels"] = labels
    return int((labels >= 0).sum())


def probe(cfg, weights, dataset, max_records, batch_size=16):
    """{kind: (correct, total)} over the first ``max_records`` records of ``dataset``, and the
    number of records read."""
    import torch
    from detectron2.data import DatasetCatalog

    from vlbert_d2.checkpoint import VLBertCheckpointer
    from vlbert_d2.data import PretrainDatasetMapper
    from vlbert_d2.engine import VLBertTrainer

    model = VLBertTrainer.build_model(cfg)
    VLBertCheckpointer(model).load(weights)
    model.eval()
    mapper = PretrainDatasetMapper(cfg, is_train=False)
    # Nothing masked by the mapper: the probe chooses the words; no region is masked.
    mapper.with_mlm, mapper.mvrc_prob = False, 0.0
    records = DatasetCatalog.get(dataset)[:max_records]
    mapped = [mapper(r) for r in records]  # read once; each kind masks a copy of the word pieces
    results = {}
    for kind, words in word_kinds().items():
        correct = total = 0
        for k in range(0, len(mapped), batch_size):
            batch = [dict(x, input_ids=x["input_ids"].clone()) for x in mapped[k:k + batch_size]]
            batch = [x for x in batch if mask_kind(x, kind, words, mapper.tokenizer)]
            if not batch:
                continue
            with torch.no_grad():
                counts = model(batch)
            correct += sum(c["mlm_correct"] for c in counts)
            total += sum(c["mlm_total"] for c in counts)
        results[kind] = (correct, total)
    return results, len(records)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=CONFIG, help="the pre-training config (default: %(default)s)")
    p.add_argument("--weights", required=True, help="the pre-trained model (.pth)")
    p.add_argument("--dataset", default="synthetic_captions_pixels_val", help="captions dataset (default: %(default)s)")
    p.add_argument("--max-records", type=int, default=300, help="first N captions (default: %(default)s)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    a = p.parse_args(argv)
    if not os.path.isfile(a.weights):
        raise SystemExit(f"{a.weights}: not found")
    sys.path.insert(0, os.path.join(REPO, "projects", "SyntheticVL"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from detectron2.config import get_cfg

        from vlbert_d2 import add_vlbert_config
        from vlbert_d2.config import finalize_vlbert_config
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, a.config_file) if not os.path.isabs(a.config_file) else a.config_file)
    cfg.merge_from_list(a.opts)
    finalize_vlbert_config(cfg, None)
    cfg.freeze()
    results, n = probe(cfg, a.weights, a.dataset, a.max_records)
    print(f"masked words per kind, {a.dataset} ({n} captions), {a.weights}:")
    for kind, (correct, total) in results.items():
        acc = 100.0 * correct / total if total else float("nan")
        print(f"  {kind:<8} {acc:6.2f}% of {total}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"captions": n, **{k: {"correct": c, "total": t} for k, (c, t) in results.items()}},
                      f, indent=1)
    return results


if __name__ == "__main__":
    main()
