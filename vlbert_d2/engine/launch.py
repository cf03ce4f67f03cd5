"""Several training processes on CPU (torch.distributed over gloo).

detectron2 v0.6's ``launch`` asserts CUDA in every spawned process and uses NCCL. On a machine
without a GPU, or with ``MODEL.DEVICE cpu``, :func:`launch` here spawns the processes itself,
joins them with the gloo backend, and sets detectron2's local process group, so that detectron2's
``comm`` helpers, DistributedDataParallel and the evaluators' gathering work as on GPUs.
"""
import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

__all__ = ["launch", "wants_cpu"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def wants_cpu(opts, config_file=None):
    """Whether the run is on CPU: no CUDA here, or ``MODEL.DEVICE cpu`` in the overrides or in
    the config file."""
    if not torch.cuda.is_available():
        return True
    pairs = dict(zip(opts[::2], opts[1::2]))
    if "MODEL.DEVICE" in pairs:
        return str(pairs["MODEL.DEVICE"]).startswith("cpu")
    if config_file:
        from detectron2.config import get_cfg

        from ..config import add_vlbert_config

        cfg = add_vlbert_config(get_cfg())
        cfg.set_new_allowed(True)
        cfg.merge_from_file(config_file)
        return cfg.MODEL.DEVICE.startswith("cpu")
    return False


def launch(main_func, num_processes, num_machines=1, machine_rank=0, dist_url=None, args=(),
           cpu=False, timeout=DEFAULT_TIMEOUT):
    """detectron2's ``launch``, or with ``cpu`` the same over gloo without GPUs.

    Args:
        num_processes (int): processes on this machine (``--num-gpus``).
        cpu (bool): run the processes on CPU (gloo).
    """
    world_size = num_machines * num_processes
    if not cpu or world_size == 1:
        return d2_launch(main_func, num_processes, num_machines=num_machines, machine_rank=machine_rank,
                         dist_url=dist_url, args=args, timeout=timeout)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_processes, daemon=False,
             args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout))


def _cpu_worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_processes + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    for i in range(world_size // num_processes):
        group = dist.new_group(list(range(i * num_processes, (i + 1) * num_processes)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
