"""The analysis process keeps freed memory: a layer's second large allocation needs no fresh pages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test starts a Python process

SCRIPT = """
import contextlib, ctypes, io, resource, runpy, sys
from repgeom.analysis.memory import keep_freed_memory
mode = sys.argv[1]
if mode == "entry":  # the analysis entry point as a process runs it (here only up to its --help)
    sys.argv = ["python -m repgeom.analysis", "--help"]
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        runpy.run_module("repgeom.analysis", run_name="__main__")
applied = keep_freed_memory() if mode == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20  # a layer's Gram matrix
first = libc.malloc(size)
ctypes.memset(first, 1, size)  # every page touched
libc.free(first)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = libc.malloc(size)
ctypes.memset(second, 1, size)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_allocation(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc setting")
def test_freed_memory_serves_the_next_allocation():
    applied, kept_faults = second_allocation("keep")
    _, default_faults = second_allocation("default")
    assert applied
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # 4 KiB pages: one fault each, 65,536 for 256 MiB
        assert default_faults > 30_000
    assert kept_faults < 1_000 and kept_faults < default_faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc setting")
def test_the_analysis_entry_point_keeps_freed_memory():
    _, entry_faults = second_allocation("entry")
    _, default_faults = second_allocation("default")
    assert entry_faults < 1_000 and entry_faults < default_faults
