"""tools/benchmark.py: a smoke run on the tiny config reports every row at fp32 and bf16, with
ratios, evaluation throughput and estimates that follow from the rows; the arithmetic of the
estimates and the ratios against hand-computed cases."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")


def _benchmark_module():
    """tools/benchmark.py as a module (its top level imports no torch)."""
    spec = importlib.util.spec_from_file_location("vlbert_benchmark_tool", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_estimates_hand_computed():
    b = _benchmark_module()
    # 10 samples/s: 20 x 212,923 / 10 = 425,846 s = 118.29 h.
    assert b.vcr_finetune_seconds(10.0) == 425_846.0
    assert round(b.vcr_finetune_seconds(10.0) / 3600, 2) == 118.29
    assert b.format_duration(425_846.0) == "118.3 h (4.93 days)"
    # 250,000 x 256 / 10 = 6,400,000 s.
    assert b.pretrain_seconds(10.0) == 6_400_000.0
    with pytest.raises(ValueError):
        b.vcr_finetune_seconds(0.0)


def test_ratios_hand_computed():
    b = _benchmark_module()
    rows = {"vlbert": {"s_fwd_bwd": 6.0}, "visual": {"s_fwd_bwd": 4.0}, "visual-peer": {"s_fwd_bwd": 5.0},
            "transformer": {"s_fwd_bwd": 1.0}, "visualbert-peer": {"s_fwd_bwd": 0.8}}
    assert b.compute_ratios(rows) == pytest.approx(
        {"vlbert_over_parts": 1.2, "visual_over_peer": 0.8, "transformer_over_visualbert": 1.25})
    del rows["visualbert-peer"]
    assert "transformer_over_visualbert" not in b.compute_ratios(rows)


def test_quick_run_reports_every_row(tmp_path):
    """Every row, in its own process (~5 s each, mostly imports), tiny config; < 60 s on 2 cores."""
    b = _benchmark_module()
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, BENCHMARK, "--quick", "--iters", "1", "--json", str(out),
                           "--parts", *b.PARTS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["precisions"] == ["fp32", "bf16"]
    # The rows train with the allocator the tools set (vlbert_d2/utils/malloc.py), and say so.
    assert report["malloc_tuned"] is True and "glibc's allocator tuned]" in proc.stdout
    for precision in ("fp32", "bf16"):
        rows = {part: report["parts"][part][precision] for part in b.PARTS}
        for part, row in rows.items():
            assert row["s_per_step"] > 0 and row["s_fwd_bwd"] > 0, (part, precision, row)
            assert row["peak_MiB"] > 0 and row["params_M"] > 0, (part, precision, row)
            assert row["samples_per_s"] == pytest.approx(1 / row["s_per_step"])
        for part in ("vlbert", "vlbert-precomputed"):  # the training steps: + optimizer step
            assert rows[part]["s_per_step"] == pytest.approx(rows[part]["s_fwd_bwd"] + rows[part]["s_optimizer"])

        ratios = report["ratios"][precision]
        t = {part: row["s_fwd_bwd"] for part, row in rows.items()}
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())
        assert ratios["vlbert_over_parts"] == pytest.approx(t["vlbert"] / (t["visual"] + t["transformer"]))
        assert ratios["visual_over_peer"] == pytest.approx(t["visual"] / t["visual-peer"])
        assert ratios["transformer_over_visualbert"] == pytest.approx(t["transformer"] / t["visualbert-peer"])

        sps = rows["vlbert"]["samples_per_s"]
        estimate = report["estimates"][precision]
        assert estimate["vcr_finetune_s"] == pytest.approx(20 * 212_923 / sps)
        assert estimate["pretrain_s"] == pytest.approx(250_000 * 256 / sps)
        sps = rows["vlbert-precomputed"]["samples_per_s"]
        assert estimate["precomputed"]["vcr_finetune_s"] == pytest.approx(20 * 212_923 / sps)

        evaluation = report["eval"][precision]
        assert [r["batch"] for r in evaluation] == [1, 8]  # 1 and TEST.IMS_PER_BATCH
        for r in evaluation:
            assert r["s_per_batch"] > 0
            assert r["samples_per_s"] == pytest.approx(r["batch"] / r["s_per_batch"])
    for heading in ("== fp32 ==", "== bf16 autocast ==", "== ratios", "== evaluation throughput",
                    "== estimates", "VCR-Base fine-tuning"):
        assert heading in proc.stdout, proc.stdout
