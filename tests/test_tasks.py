"""The task table (vlbert_d2/tasks.py, docs/adding_a_task.md): every task's parts are registered
under its name, and a new task plugs in with one row and one registration per layer."""
import pytest
import torch

import vlbert_d2  # noqa: F401  (registers data and models)
from detectron2.modeling import META_ARCH_REGISTRY
from vlbert_d2.data import TASK_MAPPERS, register_task_mapper
from vlbert_d2.engine.predictor import PREDICTOR_TASKS
from vlbert_d2.evaluation import TASK_EVALUATORS, register_task_evaluator
from vlbert_d2.modeling import VLBERT_HEAD_REGISTRY, keep_alive
from vlbert_d2.tasks import CHOICES, TASKS, Task, get_task, register_task, task_of_head
from vlbert_d2.utils.visualization import DRAWINGS, SUMMARIES


def test_every_task_has_all_its_parts():
    assert set(TASKS) >= {"vcr", "vqa", "refcoco", "pretrain"}
    for name, task in TASKS.items():
        assert VLBERT_HEAD_REGISTRY.get(task.head) is not None
        assert META_ARCH_REGISTRY.get(task.meta_architecture) is not None
        assert name in TASK_MAPPERS and name in TASK_EVALUATORS, name
        assert task_of_head(task.head) is task
    for name in PREDICTOR_TASKS:
        assert name in DRAWINGS and name in SUMMARIES, name


def test_table_rejects_clashes():
    with pytest.raises(ValueError, match="VQAHead"):
        register_task(Task(name="other", head="VQAHead", label_space=CHOICES))
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task(name="vqa", head="SomethingElse", label_space=CHOICES))
    with pytest.raises(KeyError, match="no task"):
        register_task_mapper("not_a_task", object)
    with pytest.raises(KeyError, match="no task"):
        register_task_evaluator("not_a_task", object)


def test_pretraining_runs_in_its_subclass(tiny_cfg):
    from detectron2.modeling import build_model

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.MODEL.VLBERT.HEAD = get_task("pretrain").head
    with pytest.raises(ValueError, match="VLBERTPretrain"):
        build_model(cfg)  # MODEL.META_ARCHITECTURE is still "VLBERT"


def test_keep_alive_is_a_zero_reaching_every_tensor():
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)
    zero = keep_alive(a, b)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(a.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(2, 2))


def test_a_new_task_plugs_in_by_name():
    """The worked example of docs/adding_a_task.md, registry side: one row, one registration per
    layer, and the builders find them from the config's head."""
    from torch import nn

    from vlbert_d2.data import build_vlbert_mapper
    from vlbert_d2.evaluation import build_vlbert_evaluator

    task = register_task(Task(name="toy_match", head="ToyMatchHead", label_space=CHOICES))
    try:
        @VLBERT_HEAD_REGISTRY.register()
        class ToyMatchHead(nn.Module):
            def __init__(self, cfg, hidden_size):
                super().__init__()

        register_task_mapper("toy_match", lambda cfg, is_train: ("mapper", is_train))
        register_task_evaluator("toy_match", lambda cfg, name, out: ("evaluator", name))
        from detectron2.config import get_cfg
        from detectron2.data import MetadataCatalog

        from vlbert_d2 import add_vlbert_config

        cfg = add_vlbert_config(get_cfg())
        cfg.MODEL.VLBERT.HEAD = task.head
        assert build_vlbert_mapper(cfg, True) == ("mapper", True)
        MetadataCatalog.get("toy_match_val").set(evaluator_type="toy_match")
        assert build_vlbert_evaluator(cfg, "toy_match_val") == ("evaluator", "toy_match_val")
    finally:
        TASKS.pop("toy_match", None)
        TASK_MAPPERS.pop("toy_match", None)
        TASK_EVALUATORS.pop("toy_match", None)
        VLBERT_HEAD_REGISTRY._obj_map.pop("ToyMatchHead", None)
