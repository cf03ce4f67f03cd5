"""The evaluation loader: detectron2's inference sampler over a dataset whose records are checked
first, in batches of ``TEST.IMS_PER_BATCH`` records."""
import torch.utils.data as torchdata

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler

from .validation import check_dataset_records


def build_vlbert_test_loader(cfg, dataset_name, mapper):
    """detectron2's test loader over ``dataset_name``, after every record has been checked
    (:func:`~.validation.check_dataset_records`): a bad record stops the evaluation before it
    starts (``DATALOADER.BAD_RECORDS = "error"``) or is left out ("skip").

    Args:
        cfg (CfgNode): the run's config (``DATALOADER.NUM_WORKERS`` loader processes).
        dataset_name (str): a registered dataset.
        mapper (callable): the task's evaluation mapper.

    Returns:
        torch.utils.data.DataLoader: lists of up to ``TEST.IMS_PER_BATCH`` mapped records
        (detectron2's test loader gives one), in the dataset's order, this process's share
        (:class:`~detectron2.data.samplers.InferenceSampler`: contiguous, each record once).
    """
    if MetadataCatalog.get(dataset_name).get("pretrain_kind", None) == "text":
        # A text corpus (BooksCorpus: ~1 GB) is evaluated on a fixed, evenly spread sample of
        # MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES passages (0: all), read from disk on demand.
        dicts = DatasetCatalog.get(dataset_name).sample(cfg.MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES)
    else:
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    dicts = check_dataset_records(cfg, dataset_name, dicts, is_train=False)
    batch_size = cfg.TEST.IMS_PER_BATCH
    if batch_size < 1:
        raise ValueError(f"TEST.IMS_PER_BATCH must be >= 1, got {batch_size}")
    # (the text corpus's sample is a lazy sequence read on demand, not a list)
    dataset = MapDataset(DatasetFromList(dicts, copy=False) if isinstance(dicts, list) else dicts, mapper)
    # The batches of one process never mix in another's records: the sampler's shard is cut
    # into batches in order (the last one may be shorter), so nothing is dropped or repeated.
    sampler = torchdata.BatchSampler(InferenceSampler(len(dataset)), batch_size, drop_last=False)
    return torchdata.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                collate_fn=trivial_batch_collator)
