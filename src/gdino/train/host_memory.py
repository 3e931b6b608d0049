"""Keep freed host memory in the process: large tensors reuse it instead of new pages.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it to the kernel on ``free``. A training step on the CPU allocates and frees
the same large activations and gradients every step (Swin-T at 512 px: an encoder FFN's hidden
activation alone is 89 MB), so each of them is new pages, zeroed by the kernel and faulted in on
first write: measured 35% of a Swin-T 512 step's CPU time (benchmarks/RESULTS.md, "Training
step"). With mmap off for ``malloc`` (``M_MMAP_MAX = 0``) and the heap never trimmed
(``M_TRIM_THRESHOLD`` at its maximum), freed blocks stay in the heap and the next step reuses
them (measured with glibc 2.36: blocks up to 32 MiB are reused; larger ones, like that 89 MB
activation, still get new pages). The resident set then stays at the step's peak instead of
falling between steps.

The same setting from the environment, for any process: ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647``. Other C libraries: nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_MAX`` to 0 and ``M_TRIM_THRESHOLD`` to its maximum; True when applied
    (Linux with glibc), False elsewhere. Affects the whole process from this call on."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt tuning of these)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    log.debug("glibc malloc: keep freed memory (M_MMAP_MAX=0, M_TRIM_THRESHOLD=max): %s", applied)
    return applied
