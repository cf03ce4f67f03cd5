"""The installed environment: detectron2's Python-only build, collect_env, the synthetic CLI."""
import subprocess
import sys

import pytest

from conftest import REPO


def test_detectron2_modeling_imports_on_its_own():
    res = subprocess.run([sys.executable, "-c", "import detectron2.modeling"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_compiled_only_op_names_itself_in_the_python_only_build():
    import detectron2._C as C

    if not getattr(C, "PYTHON_ONLY_BUILD", False):
        pytest.skip("a compiled detectron2 is installed")
    with pytest.raises(C.CompiledOpUnavailable, match="roi_align_rotated_forward"):
        C.roi_align_rotated_forward
    from detectron2.layers import ROIAlignRotated
    import torch

    layer = ROIAlignRotated((2, 2), 1.0, 0)
    with pytest.raises(C.CompiledOpUnavailable, match="roi_align_rotated_forward"):
        layer(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 2, 2, 2, 2, 0]]))


def test_collect_env_reports_versions_build_and_device():
    res = subprocess.run([sys.executable, "-m", "vlbert_d2.collect_env"], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    import detectron2
    import torch
    import transformers

    out = res.stdout
    assert f"torch             {torch.__version__}" in out
    assert f"transformers      {transformers.__version__}" in out
    assert f"detectron2        {detectron2.__version__}" in out
    assert "detectron2 build  Python-only" in out or "detectron2 build  compiled" in out
    assert "device" in out and ("cpu" in out or "cuda" in out)


def test_synthetic_cli_writes_the_vcr_layout(tmp_path):
    root = tmp_path / "synth"
    cmd = [sys.executable, "-m", "synthetic_vl", "--root", str(root), "--train", "4",
           "--val", "2", "--test", "2", "--question-types", "size"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "RuntimeWarning" not in res.stderr
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        assert len((root / f"{split}.jsonl").read_text().splitlines()) == n
    assert any((root / "vcr1images").rglob("*.jpg"))
