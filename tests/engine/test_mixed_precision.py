"""Mixed precision (SOLVER.AMP): the config keys, bf16 training of the tiny model on the CPU
against fp32, and the fp16 step's loss scaling on a case computed by hand."""
import json
import math

import pytest
import torch
from torch import nn

from conftest import TINY_YAML, copypaste_metrics, make_cfg, run
from vlbert_d2.engine.amp import AutocastInference, MixedPrecisionTrainer, amp_settings

# The tolerance stated in docs/model.md: a bf16 run of the tiny model ends within this many
# points of Q->A accuracy of the same run in fp32.
BF16_ACCURACY_TOLERANCE = 5.0


def test_amp_settings_honour_the_keys():
    assert amp_settings(make_cfg()) is None  # off by default
    cfg = make_cfg(SOLVER__AMP__ENABLED=True, SOLVER__AMP__PRECISION="bfloat16")
    assert amp_settings(cfg) == ("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        amp_settings(make_cfg(SOLVER__AMP__ENABLED=True, SOLVER__AMP__PRECISION="float16"))
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION must be one of"):
        amp_settings(make_cfg(SOLVER__AMP__ENABLED=True, SOLVER__AMP__PRECISION="half"))


def test_trainer_runs_the_forward_in_bf16_and_keeps_fp32_weights(tiny_cfg, tmp_path):
    from vlbert_d2.engine import VLBertTrainer

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16", "SOLVER.MAX_ITER", 1,
                         "SOLVER.IMS_PER_BATCH", 2, "OUTPUT_DIR", str(tmp_path), "TEST.EVAL_PERIOD", 0])
    trainer = VLBertTrainer(cfg)
    assert isinstance(trainer._trainer, MixedPrecisionTrainer)
    assert trainer._trainer.dtype is torch.bfloat16 and not trainer._trainer.grad_scaler.is_enabled()
    seen = []
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in linears]
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        trainer._trainer.storage, trainer._trainer.iter = storage, 0
        trainer._trainer.run_step()
    for h in handles:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.model.parameters())
    # A bf16 run keeps no scaler state, and reads back its own checkpoint state.
    state = trainer._trainer.state_dict()
    assert "grad_scaler" not in state
    trainer._trainer.load_state_dict(state)


class _Scale(nn.Module):
    """loss = w * x (one weight): its gradient is x."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        return {"loss": (self.w * x).sum()}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fp16_step_scales_the_loss_and_skips_overflowing_steps():
    """The fp16 path's GradScaler (run on the CPU here, where torch has one too): a finite
    gradient updates the weight by exactly lr * x, unscaled; an infinite one leaves the weight
    alone and halves the scale (PyTorch's dynamic loss scaling: 2**16, backoff 0.5)."""
    model = _Scale().train()
    inputs = iter([torch.tensor([3.0]), torch.tensor([float("inf")])])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MixedPrecisionTrainer(model, inputs, optimizer, device_type="cpu", dtype=torch.float16)
    trainer._write_metrics = lambda loss_dict, data_time: None  # the inf loss is the point here
    assert trainer.grad_scaler.get_scale() == 2.0**16
    trainer.run_step()
    assert model.w.item() == pytest.approx(1.0 - 0.1 * 3.0)
    trainer.run_step()
    assert model.w.item() == pytest.approx(0.7)  # skipped
    assert trainer.grad_scaler.get_scale() == 2.0**15
    assert trainer.state_dict()["grad_scaler"]["scale"] == 2.0**15


def test_autocast_inference_gives_fp32_outputs():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, xs):
            return [{"scores": self.fc(x), "index": torch.tensor(1)} for x in xs]

    out = AutocastInference(M(), "cpu", torch.bfloat16)([torch.ones(3, 4)])
    assert out[0]["scores"].dtype == torch.float32 and out[0]["index"].dtype == torch.int64


def test_soft_target_loss_is_computed_in_fp32_under_cpu_autocast():
    """The masked-RoI soft cross-entropy (pre-training's class and attribute targets) on bf16
    logits under CPU autocast, against its value and gradient written by hand in float64:
    loss = -sum(t * log softmax(z)) / M, d loss / d z = (softmax(z) - t) / M. The targets are a
    distribution close to the prediction, as late in training, so the gradient is a small
    difference of probabilities: a bf16 log-softmax (CPU autocast leaves it in bf16, CUDA's runs
    it in fp32) gets its value wrong in the third digit and the difference wrong by more than
    itself; computed in fp32 it is only rounded to bf16 once at the end (relative 2**-8)."""
    from vlbert_d2.modeling.heads import _soft_ce

    rows = [[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0], [0.25, -0.75, 3.0, 1.25, -2.0, 0.5, 0.125]]  # exact in bf16
    shifts = [[0.01, -0.02, 0.015, 0.0, -0.01, 0.02, 0.005], [-0.01, 0.01, -0.005, 0.02, 0.0, -0.015, 0.01]]

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    probs = [softmax(z) for z in rows]
    targets = [softmax([v + d for v, d in zip(z, s)]) for z, s in zip(rows, shifts)]
    loss_by_hand = -sum(t * math.log(p) for tr, pr in zip(targets, probs) for t, p in zip(tr, pr)) / len(rows)
    grad_by_hand = torch.tensor([[(p - t) / len(rows) for p, t in zip(pr, tr)] for pr, tr in zip(probs, targets)],
                                dtype=torch.float64)

    logits = torch.tensor(rows, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _soft_ce(logits, torch.tensor(targets), None, None, "mvrc", training=True)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_by_hand, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logits.grad.double(), grad_by_hand, rtol=2.0**-7, atol=0.0)


@pytest.fixture(scope="module")
def size_root(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = tmp_path_factory.mktemp("datasets")
    generate_vcr(str(root / "synthetic_vcr_size"), counts={"train": 96, "val": 40, "test": 4}, seed=5,
                 question_types=["size"])
    return root


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [r["total_loss"] for r in records if "total_loss" in r]


def test_bf16_training_on_cpu_matches_fp32(size_root, tmp_path):
    """The tiny model trained 50 iterations from the same seed in fp32 and in bf16 autocast:
    both learn (the loss falls to under half), and bf16 ends within the stated tolerance of
    fp32's accuracy."""
    common = ["--config-file", TINY_YAML, "SOLVER.MAX_ITER", "50", "SOLVER.IMS_PER_BATCH", "8",
              "SOLVER.WARMUP_ITERS", "10", "MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0",
              "SOLVER.CHECKPOINT_PERIOD", "1000"]
    results = {}
    for name, extra in [("fp32", []), ("bf16", ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"])]:
        out = tmp_path / name
        proc = run(common + extra + ["OUTPUT_DIR", str(out)], size_root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses = _losses(out)
        assert len(losses) >= 3, losses  # logged every 20 iterations (median of the window)
        first, last = losses[0], losses[-1]
        assert math.isfinite(last) and last < 0.5 * first, (name, losses)
        results[name] = copypaste_metrics(proc.stdout)["Q2A"]
        if name == "bf16":
            assert "Mixed precision: torch.bfloat16 autocast on cpu" in proc.stderr + proc.stdout
    assert results["fp32"] >= 80.0, results  # chance: 25%
    assert abs(results["bf16"] - results["fp32"]) <= BF16_ACCURACY_TOLERANCE, results
