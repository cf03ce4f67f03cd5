"""What every evaluator of this project does the same way."""
import itertools

from detectron2.utils import comm


def gather_on_main(items, distributed=True):
    """All processes' prediction lists concatenated on the main process (order: by rank).

    Returns:
        list, or None on the other processes (which then return ``{}`` from ``evaluate``).
    """
    if not distributed:
        return list(items)
    comm.synchronize()
    parts = comm.gather(list(items), dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain(*parts))
