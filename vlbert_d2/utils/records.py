"""Which records of a dataset the record check left out (``DATALOADER.BAD_RECORDS skip``), so
that an evaluator can tell a skipped record from a missing prediction (a bug)."""

_SKIPPED = {}


def note_skipped(dataset_name, records):
    """Remember the records of ``dataset_name`` left out by the last check in this process."""
    _SKIPPED[dataset_name] = list(records)


def skipped_records(dataset_name):
    """The records of ``dataset_name`` the last check in this process left out (dicts)."""
    return list(_SKIPPED.get(dataset_name, ()))
