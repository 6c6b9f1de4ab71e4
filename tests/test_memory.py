"""keep_freed_memory: a freed large tensor's pages are reused, not faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Allocates, fills and frees a 256 MiB tensor eight times, and prints the minor page faults
# (fresh pages handed out by the kernel) of each round.
PROGRAM = """
import json, resource, sys, torch
import mtlzoo.memory
kept = mtlzoo.memory.keep_freed_memory() if sys.argv[1] == "keep" else None
def round_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(64 * 2**20)
    tensor.fill_(1.0)
    del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": [round_faults() for _ in range(8)]}))
"""
PAGES_256_MIB = 2**28 // 4096


def run(setting: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROGRAM, setting], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    default, kept = run("default"), run("keep")
    assert kept["kept"] is True
    # glibc's default: every round maps fresh pages, one fault per 4 KiB page (or per huge page)
    assert min(default["faults"]) > PAGES_256_MIB // 1000
    # kept: the heap grows for the first rounds (posix_memalign's padding leaves a freed
    # chunk a little short of the next request), then its pages serve every round
    settled = kept["faults"][-3:]
    assert max(settled) < 100
    assert max(settled) * 10 < min(default["faults"])


def test_keep_freed_memory_reports_whether_it_applied():
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    code = ("import mtlzoo.memory as m; first = m.keep_freed_memory(); "
            "print(first, m.keep_freed_memory())")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    assert result.stdout.split() == [str(glibc)] * 2
