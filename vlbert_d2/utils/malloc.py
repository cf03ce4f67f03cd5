"""glibc's allocator set for PyTorch on the CPU: freed memory kept for the next step.

PyTorch's CPU allocator takes every tensor from ``malloc`` and gives it back with ``free``.
glibc serves a large block (above ``M_MMAP_THRESHOLD``, at most 32 MB when it adjusts it
itself) with a fresh ``mmap`` and unmaps it on ``free``, and it returns the top of its heap to
the kernel above ``M_TRIM_THRESHOLD``. A training step that allocates the same tensors again
(the word-embedding gradient alone is 47 MB: 30,522 x 384 floats) then pays a page fault for
every 4 KB page it touches, every step. Measured (docs/measurements.md): 80 iterations of the
pipeline's VQA config on 1 thread, 3.2 million minor page faults and 0.46 s an iteration with
glibc's defaults, 0.40 million and 0.34 s with the settings below, the trained weights
bit-identical; make demo-pipeline 1,421 s -> 1,303 s, its five models bit-identical.

:func:`tune_malloc` keeps every block below 1 GB in the heap (no ``mmap``), gives the top of the
heap back to the kernel only above 1 GB free, and grows it 64 MB at a time (address space: a
page costs memory once it is written). A process keeps up to 1 GB above what it uses. Set
``VLBERT_D2_MALLOC=default`` to leave glibc's defaults. On a C library without ``mallopt``
(macOS, Windows) it does nothing.
"""
import ctypes
import ctypes.util
import logging
import os

__all__ = ["tune_malloc", "MALLOC_SETTINGS", "ENV_VAR"]

ENV_VAR = "VLBERT_D2_MALLOC"
# mallopt(3) parameters (malloc.h) and their values.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
# (mallopt takes a C int: 2 GB at most.)
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 1 << 30),
                   "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 1 << 30),
                   "M_TOP_PAD": (M_TOP_PAD, 64 << 20)}

_done = None


def tune_malloc():
    """Apply :data:`MALLOC_SETTINGS` to this process (once; its forked children inherit them).

    Returns:
        bool: whether every setting took effect (False: turned off by ``VLBERT_D2_MALLOC=default``,
        no ``mallopt`` here, or a setting refused).
    """
    global _done
    if _done is not None:
        return _done
    logger = logging.getLogger(__name__)
    choice = os.environ.get(ENV_VAR, "tuned").strip().lower()
    if choice not in ("tuned", "default"):
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected 'tuned' (the default) or 'default'")
    if choice == "default":
        _done = False
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("malloc: no mallopt in this C library; its defaults are kept")
        _done = False
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [name for name, (param, value) in MALLOC_SETTINGS.items()
               if not mallopt(param, value)]
    if refused:
        logger.warning("malloc: mallopt refused %s; page faults may cost time (%s)", ", ".join(refused), __name__)
    _done = not refused
    if _done:
        logger.info("malloc: %s (freed memory kept for reuse; %s=default keeps glibc's own)",
                    ", ".join(f"{name} {value >> 20} MB" for name, (_, value) in MALLOC_SETTINGS.items()), ENV_VAR)
    return _done
