"""trainer.reuse_memory: glibc keeps a freed large block in the heap for the next allocation
(instead of unmapping it, so the next update's tensor arrives as fresh pages to fault in)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

CHECK = r"""
import ctypes, sys, torch
from metta_rl.core.device import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.empty(64 << 20, dtype=torch.uint8)
x[::4096] = 1  # touch every page
del x
info = libc.mallinfo2()
print(info.fordblks >> 20, info.hblkhd >> 20)  # MB free in the heap, MB in mmapped blocks
"""


def free_heap_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHECK, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_64_mb_block_stays_in_the_heap_only_when_kept():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33")
    assert free_heap_mb("default") < 64  # glibc's default: over 32 MB is mmapped and unmapped on free
    assert free_heap_mb("keep") >= 64
