"""Keep freed CPU memory in the process for reuse, as torch's CUDA caching allocator does.

torch takes CPU tensors from the C library's ``malloc``. glibc serves a large request (at
least 32 MiB, and from 128 KiB until its threshold has adapted) with a fresh ``mmap`` and
unmaps it when the tensor is freed. A large train step frees and asks again for the same
big activations and gradients every step, so every step the kernel hands out and zeroes
fresh 4 KiB pages, one page fault each: at B=4096 and 64 experts of width 256 that was a
third of MMoE's step and more than half of PLE's (``docs/kernels.md``).

:func:`keep_freed_memory` tells glibc (``mallopt``) to serve every request from its heap and
never to give freed heap memory back, so a step reuses the pages of the one before. The
setting is process-wide and stays: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_kept = False


def keep_freed_memory() -> bool:
    """Serve this process's allocations from glibc's heap and keep freed memory for reuse.

    Returns True once set (glibc on Linux), False where the C library is not glibc (macOS,
    Windows, musl), which changes nothing. Calling it again does nothing more.
    """
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # no request is served by mmap; freed heap memory is never trimmed back to the system
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    )
    return _kept
