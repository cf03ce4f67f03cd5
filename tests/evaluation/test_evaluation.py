"""VCR evaluation: the evaluator, Q->A / QA->R / Q->AR metrics and the leaderboard CSV."""
import csv
import json
import math
import os

import pytest
import torch

from vlbert_d2.evaluation.vcr_evaluation import (
    VCREvaluator,
    accuracy,
    load_predictions,
    vcr_metrics,
    write_leaderboard_csv,
)

# Per question: (annot_id, Q->A scores, answer label, QA->R scores, rationale label).
# Q->A is right on q0, q1, q2; QA->R on q0 and q3; both on q0 only.
CASES = [
    ("q0", [0.9, 0.1, 0.2, 0.3], 0, [0.1, 0.8, 0.2, 0.3], 1),
    ("q1", [0.1, 0.7, 0.2, 0.3], 1, [0.9, 0.1, 0.2, 0.3], 2),
    ("q2", [0.1, 0.2, 0.3, 0.6], 3, [0.1, 0.1, 0.7, 0.3], 0),
    ("q3", [0.5, 0.1, 0.2, 0.3], 2, [0.1, 0.2, 0.3, 0.9], 3),
]


def _preds(which):
    if which == "q2a":
        return {a: {"scores": s, "label": l} for a, s, l, _, _ in CASES}
    return {a: {"scores": s, "label": l} for a, _, _, s, l in CASES}


def _run(evaluator, records, batch=3):
    """Feeds (annot_id, scores, label) triples in batches, like the inference loop."""
    evaluator.reset()
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        inputs = [{"annot_id": a, "label": l} for a, _, l in chunk]
        outputs = [{"scores": torch.tensor(s), "logits": torch.tensor(s)} for _, s, _ in chunk]
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_evaluator_accuracy_and_prediction_file(tmp_path):
    ev = VCREvaluator("ds", task="Q2A", output_dir=str(tmp_path / "out"), distributed=False)
    records = [(a, s, l) for a, s, l, _, _ in CASES]
    result = _run(ev, records)
    assert set(result) == {"vcr"}
    assert result["vcr"]["Q2A"] == pytest.approx(75.0)
    assert result["vcr"]["num_predictions"] == 4 and result["vcr"]["num_labelled"] == 4
    path = tmp_path / "out" / "vcr_Q2A_predictions.json"
    saved = json.loads(path.read_text())
    assert list(saved) == ["q0", "q1", "q2", "q3"]
    for a, s, l, _, _ in CASES:
        assert saved[a]["label"] == l
        assert saved[a]["scores"] == pytest.approx(s)
    assert load_predictions(str(path)) == saved
    # reset() forgets the previous run.
    result = _run(ev, records[:1])
    assert result["vcr"]["Q2A"] == pytest.approx(100.0) and result["vcr"]["num_predictions"] == 1


def test_evaluator_qa2r_task_name(tmp_path):
    ev = VCREvaluator("ds", task="QA2R", output_dir=str(tmp_path), distributed=False)
    result = _run(ev, [(a, s, l) for a, _, _, s, l in CASES])
    assert result["vcr"]["QA2R"] == pytest.approx(50.0) and "Q2A" not in result["vcr"]
    assert (tmp_path / "vcr_QA2R_predictions.json").is_file()


def test_evaluator_test_split_saves_predictions_without_accuracy(tmp_path):
    ev = VCREvaluator("ds_test", task="QA2R", output_dir=str(tmp_path), distributed=False)
    sixteen = [[0.1 * (i + 1)] * 16 for i in range(3)]
    result = _run(ev, [(f"t{i}", s, -1) for i, s in enumerate(sixteen)])
    assert "QA2R" not in result["vcr"]
    assert result["vcr"]["num_predictions"] == 3 and result["vcr"]["num_labelled"] == 0
    saved = json.loads((tmp_path / "vcr_QA2R_predictions.json").read_text())
    assert list(saved) == ["t0", "t1", "t2"]
    assert all(len(p["scores"]) == 16 and p["label"] == -1 for p in saved.values())


def test_evaluator_without_output_dir_and_single_process_distributed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = [(a, s, l) for a, s, l, _, _ in CASES]
    # distributed=True in a single process (no process group) gathers just this rank's.
    result = _run(VCREvaluator("ds", distributed=True), records)
    assert result["vcr"]["Q2A"] == pytest.approx(75.0)
    assert os.listdir(tmp_path) == []  # nothing written without an output_dir


def test_accuracy_uses_argmax_of_first_four():
    assert accuracy([{"scores": [0.1, 0.2, 0.9, 0.0] + [5.0] * 12, "label": 2}]) == 1.0
    assert accuracy([{"scores": [0.1, 0.2, 0.9, 0.0], "label": 1}]) == 0.0
    assert math.isnan(accuracy([]))


def test_vcr_metrics_q2a_qa2r_q2ar():
    m = vcr_metrics(_preds("q2a"), _preds("qa2r"))
    assert m == pytest.approx({"Q2A": 75.0, "QA2R": 50.0, "Q2AR": 25.0})
    assert vcr_metrics(_preds("q2a")) == pytest.approx({"Q2A": 75.0})


def test_vcr_metrics_q2ar_over_common_labelled_questions():
    q2a, qa2r = _preds("q2a"), _preds("qa2r")
    del qa2r["q1"]  # no QA->R run for q1 (Q->A right, rationale unknown)
    qa2r["q3"]["label"] = -1  # unlabelled: left out of QA->R and Q->AR
    m = vcr_metrics(q2a, qa2r)
    assert m["Q2A"] == pytest.approx(75.0)
    assert m["QA2R"] == pytest.approx(50.0)  # q0 right, q2 wrong
    assert m["Q2AR"] == pytest.approx(50.0)  # over q0 (both right) and q2 (rationale wrong)
    # Unlabelled Q->A entries do not count either.
    q2a["q9"] = {"scores": [1, 0, 0, 0], "label": -1}
    assert vcr_metrics(q2a)["Q2A"] == pytest.approx(75.0)


def _test_predictions():
    q2a = {"t0": {"scores": [0.2, 0.6, 0.1, 0.1]}, "t1": {"scores": [1.0, 1.0, 1.0, 1.0]}}
    qa2r = {"t0": {"scores": [float(i + 1) for i in range(16)]},
            "t1": {"scores": [0.5] * 16}}
    return q2a, qa2r


def test_leaderboard_csv(tmp_path):
    q2a, qa2r = _test_predictions()
    path = str(tmp_path / "leaderboard.csv")
    assert write_leaderboard_csv(q2a, qa2r, path) == 2
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert len(header) == 21
    assert header[:5] == ["annot_id", "answer_0", "answer_1", "answer_2", "answer_3"]
    assert header[5:] == [f"rationale_conditioned_on_a{i}_{j}" for i in range(4) for j in range(4)]
    assert header[5] == "rationale_conditioned_on_a0_0" and header[-1] == "rationale_conditioned_on_a3_3"
    assert [r[0] for r in rows[1:]] == ["t0", "t1"]
    t0 = [float(v) for v in rows[1][1:]]
    t1 = [float(v) for v in rows[2][1:]]
    assert t0[:4] == pytest.approx([0.2, 0.6, 0.1, 0.1])  # already sums to 1
    assert t1 == pytest.approx([0.25] * 20)
    for g in range(5):  # each group of 4 sums to 1
        assert sum(t0[4 * g:4 * g + 4]) == pytest.approx(1.0)
    # Rationales given answer i are entries 4i..4i+3 of the 16 (answer-major), normalised.
    for i in range(4):
        raw = [4 * i + j + 1 for j in range(4)]
        assert t0[4 + 4 * i:8 + 4 * i] == pytest.approx([r / sum(raw) for r in raw])


def test_leaderboard_csv_needs_sixteen_rationale_scores(tmp_path):
    q2a, qa2r = _test_predictions()
    qa2r["t1"] = {"scores": [0.1, 0.2, 0.3, 0.4]}
    with pytest.raises(ValueError, match="16") as info:
        write_leaderboard_csv(q2a, qa2r, str(tmp_path / "x.csv"))
    assert "t1" in str(info.value)
    q2a, qa2r = _test_predictions()
    del qa2r["t0"]
    with pytest.raises(KeyError, match="t0"):
        write_leaderboard_csv(q2a, qa2r, str(tmp_path / "x.csv"))


def test_vcr_combine_cli(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    q2a = {"a": {"scores": [0.9, 0.1, 0.1, 0.1], "label": 0}, "b": {"scores": [0.1, 0.9, 0.1, 0.1], "label": 0}}
    qa2r = {"a": {"scores": [0.1, 0.1, 0.8, 0.1], "label": 2}, "b": {"scores": [0.1, 0.1, 0.8, 0.1], "label": 2}}
    (tmp_path / "q.json").write_text(json.dumps(q2a))
    (tmp_path / "r.json").write_text(json.dumps(qa2r))
    res = subprocess.run([sys.executable, "tools/vcr_combine.py", "--q2a", str(tmp_path / "q.json"),
                          "--qa2r", str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"Q2A": 50.0, "QA2R": 100.0, "Q2AR": 50.0}
