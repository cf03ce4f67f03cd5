"""Random states that are a pure function of (seed, position), so that a resumed or re-sharded
run draws exactly the numbers an uninterrupted one draws."""
import contextlib
import random

import numpy as np
import torch


def derive_seed(*values):
    """A 63-bit seed mixed from non-negative integers (numpy's SeedSequence: well spread, the
    same on every machine and Python version)."""
    words = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2 ** 63 - 1)


def seed_global_rngs(seed, cuda=True):
    """Seed Python's, numpy's and torch's global generators (and the current CUDA device's when
    ``cuda`` and CUDA is initialised) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.random.default_generator.manual_seed(seed)
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed(seed)


@contextlib.contextmanager
def seeded_rngs(seed):
    """Run a block with the CPU global generators seeded by ``seed``, then put back the states
    they had before, so that the block neither depends on nor disturbs the caller's draws (e.g.
    a data mapper running in the training process)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_global_rngs(seed, cuda=False)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
