"""Evaluators under two processes (torch.distributed with gloo on CPU, as detectron2's `launch`
would run them on GPUs): predictions of both ranks are gathered on the main one."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from vlbert_d2.evaluation import RefCOCOEvaluator, VQAEvaluator
        from vlbert_d2.evaluation.common import gather_on_main

        gathered = gather_on_main([rank, rank + 10])
        ev = RefCOCOEvaluator("pytest_dist", output_dir=out_dir)
        ev.reset()
        # Rank 0 predicts the referred box, rank 1 a wrong one.
        box = torch.tensor([[0.0, 0, 9, 9], [50.0, 50, 59, 59]])
        ev.process([{"candidate_boxes": box, "gt_box": box[0], "ref_id": rank, "sent_id": rank}],
                   [{"index": rank}])
        ref = ev.evaluate()
        vqa = VQAEvaluator("pytest_dist_vqa", ["yes", "no"])
        vqa.process([{"question_id": rank}], [{"scores": torch.tensor([1.0, 0.0])}])
        pairs = gather_on_main(vqa._predictions.items())
        results[rank] = (gathered, ref, pairs)
    finally:
        dist.destroy_process_group()


def test_gather_and_refcoco_evaluator_across_two_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), results), nprocs=2, join=True)
    gathered, ref, pairs = results[0]
    assert gathered == [0, 10, 1, 11]
    assert ref == {"refcoco": {"accuracy": 50.0, "num_predictions": 2.0}}
    assert sorted(pairs) == [(0, "yes"), (1, "yes")]
    assert results[1] == (None, {}, None)  # the other rank returns nothing
    written = (tmp_path / "refcoco_pytest_dist_results.json").read_text()
    assert '"ref_id": 0' in written and '"ref_id": 1' in written
