"""The task table: what makes each task of VL-BERT, in one place (docs/adding_a_task.md).

A task is a row of :data:`TASKS`, keyed by its name. The name is the key under which every layer
registers its own part, so that no layer imports another one sideways:

==========================  =================================================================
part                        registered by
==========================  =================================================================
this row                    :func:`register_task` (here: the built-in tasks)
head                        ``@VLBERT_HEAD_REGISTRY.register()`` (``vlbert_d2.modeling``),
                            under :attr:`Task.head`, which ``MODEL.VLBERT.HEAD`` names
meta-architecture           ``META_ARCH_REGISTRY`` (:attr:`Task.meta_architecture`, which
                            ``MODEL.META_ARCHITECTURE`` names)
dataset mapper              :func:`vlbert_d2.data.register_task_mapper`
evaluator                   :func:`vlbert_d2.evaluation.register_task_evaluator`; a dataset
                            says which one evaluates it with its metadata's
                            ``evaluator_type``, the task's name
predictor (answer + text)   :func:`vlbert_d2.engine.predictor.register_predictor_task`
demo drawing                :func:`vlbert_d2.utils.visualization.register_drawing`
==========================  =================================================================

The config names the head (``MODEL.VLBERT.HEAD``); :func:`task_for_cfg` finds its row.

This module is the bottom of the library: it imports nothing of it, and every layer may read it.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["Task", "TASKS", "register_task", "get_task", "task_of_head", "task_for_cfg",
           "ANSWERS", "CHOICES", "REGIONS", "PRETRAINING"]

# Label spaces: what a task's prediction is chosen among.
ANSWERS = "answers"          # an answer vocabulary, filled into the config (MODEL.VLBERT.VQA.*)
CHOICES = "choices"          # one of the input's given texts (K choices)
REGIONS = "regions"          # one of the input's regions (RoI 0: the whole image)
PRETRAINING = "pretraining"  # no label: the masked words and regions of the input


@dataclass(frozen=True)
class Task:
    """One row of the task table.

    Attributes:
        name (str): the task's name ("vqa"); also the ``evaluator_type`` of its datasets'
            metadata, and the key its mapper, evaluator, predictor and drawing are registered
            under.
        head (str): the head's name in ``VLBERT_HEAD_REGISTRY`` (``MODEL.VLBERT.HEAD``).
        label_space (str): :data:`ANSWERS`, :data:`CHOICES`, :data:`REGIONS` or
            :data:`PRETRAINING`.
        meta_architecture (str): the meta-architecture the head runs in
            (``MODEL.META_ARCHITECTURE``): "VLBERT", or a subclass such as "VLBERTPretrain".
        mixed_text_batches (bool): training batches mix image-text and text-only datasets
            (``MODEL.VLBERT.PRETRAIN.TEXT_FRACTION``), as pre-training's.
        heads_from_pretraining (tuple[(str, str)]): (pre-training prefix, head prefix) pairs of
            state-dict keys: loading a pre-training checkpoint starts the head from them (the
            official configs' ``PARTIAL_PRETRAIN_PREFIX_CHANGES``) unless it has that part.
        description (str): one line, for messages and docs.
    """

    name: str
    head: str
    label_space: str
    meta_architecture: str = "VLBERT"
    mixed_text_batches: bool = False
    heads_from_pretraining: Tuple[Tuple[str, str], ...] = ()
    description: str = ""


TASKS = {}  # name -> Task, in registration order


def register_task(task):
    """Add ``task`` to the table (a new task, or a new row replacing a task's one of the same
    name and head). Returns it.

    Raises:
        ValueError: another task already has that name or that head.
    """
    if task.label_space not in (ANSWERS, CHOICES, REGIONS, PRETRAINING):
        raise ValueError(f"task {task.name!r}: unknown label space {task.label_space!r}")
    for other in TASKS.values():
        if other.name != task.name and other.head == task.head:
            raise ValueError(f"task {task.name!r}: head {task.head!r} is task {other.name!r}'s")
        if other.name == task.name and other.head != task.head:
            raise ValueError(f"task {task.name!r} is already registered with head {other.head!r}")
    TASKS[task.name] = task
    return task


def get_task(name):
    """The task named ``name``. Raises KeyError naming the known ones."""
    if name not in TASKS:
        raise KeyError(f"no task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def task_of_head(head) -> Optional[Task]:
    """The task whose head is ``head`` (a ``MODEL.VLBERT.HEAD`` value), None when no row names it."""
    return next((t for t in TASKS.values() if t.head == head), None)


def task_for_cfg(cfg):
    """The task of the config's ``MODEL.VLBERT.HEAD``. Raises KeyError when no row names it."""
    task = task_of_head(cfg.MODEL.VLBERT.HEAD)
    if task is None:
        raise KeyError(f"MODEL.VLBERT.HEAD={cfg.MODEL.VLBERT.HEAD!r} is the head of no task; the tasks' "
                       f"heads: {sorted(t.head for t in TASKS.values())} (register a task: "
                       "docs/adding_a_task.md)")
    return task


# --- The built-in tasks (paper sections 3.3 and 4) ---
register_task(Task(
    name="vcr", head="VCRHead", label_space=CHOICES,
    # cfgs/vcr/*: "vlbert.mvrc_head.transform->cnn_loss_reg.0" (dense, GELU; its Linear(H, 81)
    # keeps its initialisation).
    heads_from_pretraining=(("head.mvrc_transform.0.", "head.roi_classifier.0."),),
    description="visual commonsense reasoning: one of K answers (or rationales)"))
register_task(Task(
    name="vqa", head="VQAHead", label_space=ANSWERS,
    heads_from_pretraining=(("head.mlm_transform.", "head.transform."),),  # dense, GELU, LayerNorm
    description="visual question answering: an answer of the answer vocabulary"))
register_task(Task(
    name="refcoco", head="RefCOCOHead", label_space=REGIONS,
    heads_from_pretraining=(("head.mvrc_transform.", "head.transform."),),  # dense, GELU
    description="referring expressions (RefCOCO+): the region the expression refers to"))
register_task(Task(
    name="pretrain", head="PretrainHead", label_space=PRETRAINING, meta_architecture="VLBERTPretrain",
    mixed_text_batches=True,
    description="pre-training: masked words and masked regions, on captions and a text corpus"))
