"""The evaluation loader: detectron2's, over a dataset whose records are checked first."""
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts

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
        torch.utils.data.DataLoader: batches of one mapped record.
    """
    if MetadataCatalog.get(dataset_name).get("pretrain_kind", None) == "text":
        # A text corpus (BooksCorpus: ~1 GB) is evaluated on a fixed, evenly spread sample of
        # MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES passages (0: all), read from disk on demand.
        dicts = DatasetCatalog.get(dataset_name).sample(cfg.MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES)
    else:
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    dicts = check_dataset_records(cfg, dataset_name, dicts, is_train=False)
    return build_detection_test_loader(dataset=dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
