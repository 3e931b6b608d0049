"""``keep_freed_memory``: a large block freed and allocated again reuses the heap's pages.

Run in a subprocess: the setting is process-wide and would keep the test process's freed memory.
The check counts minor page faults (not time): after a 64 MiB block, a 16 MiB tensor written twice,
freed in between, faults in its 4096 pages twice with glibc's default mmap path and once with the
setting.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from gdino.train.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults(n):
    t = torch.empty(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t.fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(16 * 1024 * 1024)  # a 64 MiB block first, as a step's largest activations grow the heap
faults(4 * 1024 * 1024)
print(faults(4 * 1024 * 1024))  # 16 MiB of float32, the second time
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning (Linux)")
def test_freed_block_is_reused_without_page_faults():
    counts = {}
    for mode in ("default", "keep"):
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        counts[mode] = int(done.stdout.split()[-1])
    assert counts["default"] > 3_000, counts  # 4096 pages, faulted in again after the free
    assert counts["keep"] < 300, counts  # the heap's pages, already resident
