"""vlbert_d2.utils.malloc against the kernel's own count of page faults (getrusage), in fresh
processes: with glibc's defaults a freed 64 MB tensor is unmapped and its next allocation faults
in each of its 16,384 pages again; tuned, the heap keeps the pages, and ten rounds fault them in
once at most."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

PAGES = (64 << 20) // 4096  # pages of one 64 MB tensor
ROUNDS = 10

SCRIPT = f"""
import resource, torch
from vlbert_d2.utils.malloc import tune_malloc
tuned = tune_malloc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(64 << 18); del x  # 64 MB of floats, once before counting
start = faults()
for _ in range({ROUNDS}):
    x = torch.ones(64 << 18); del x
print(tuned, faults() - start)
"""


def _faults(setting):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.pop("VLBERT_D2_MALLOC", None)
    if setting is not None:
        env["VLBERT_D2_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()[-2:]
    return tuned == "True", int(faults)


def _thp_always():
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and Linux's fault counter")
@pytest.mark.skipif(_thp_always(), reason="transparent huge pages always on: a fault maps 2 MB, not the 4 KB counted")
def test_tuned_malloc_reuses_freed_pages():
    default_applied, default_faults = _faults("default")
    tuned_applied, tuned_faults = _faults(None)  # the default of the variable: tuned
    assert not default_applied and tuned_applied
    # glibc's defaults: every allocation maps the tensor again and writes every page.
    assert default_faults >= 0.9 * ROUNDS * PAGES, default_faults
    # Tuned: the pages stay in the heap. At most one round faults them in (seen: exactly one, when
    # a small block took the front of the freed one and the heap grew once), not every round.
    assert tuned_faults <= 1.1 * PAGES, tuned_faults


def test_bad_setting_names_the_variable(monkeypatch):
    from vlbert_d2.utils import malloc

    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.setenv("VLBERT_D2_MALLOC", "fast")
    with pytest.raises(ValueError, match="VLBERT_D2_MALLOC='fast'.*'tuned'.*'default'"):
        malloc.tune_malloc()
