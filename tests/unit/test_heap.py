"""The serving process's allocator settings (``cli/heap.py``): request-sized buffers freed in a burst
stay in the heap for the next burst instead of going back to the kernel and faulting in again.

Each check runs in a fresh interpreter: the settings are per process and glibc's own thresholds move
with what the process allocated before, so this process's history would decide the outcome."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)

BURSTS = """
import resource
from modelport.cli.heap import keep_heap_pages
print(keep_heap_pages())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def burst():
    bodies = [bytes(100_000) for _ in range(20)]  # 20 raw RSW-1 batch-B bodies in flight, then answered
    del bodies
for _ in range(3):
    burst()
before = faults()
for _ in range(50):
    burst()
print((faults() - before) / 50)
"""


def _bursts(env: dict[str, str] | None = None, *, keep: bool = True) -> tuple[bool, float]:
    """(whether the settings were applied, minor page faults per burst of request buffers)."""
    code = BURSTS if keep else BURSTS.replace("print(keep_heap_pages())", "print(False)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


def test_request_buffers_freed_in_a_burst_are_reused_without_page_faults() -> None:
    applied, faults = _bursts()
    assert applied
    assert faults < 5, f"{faults} page faults per burst with the heap kept"


def test_without_the_settings_the_same_bursts_fault_their_pages_in_again() -> None:
    """What the settings are for: glibc's defaults give the burst's pages back and fault them in."""
    applied, faults = _bursts(keep=False)
    assert not applied
    assert faults > 100


def test_an_operators_malloc_environment_wins() -> None:
    applied, _ = _bursts({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not applied
    applied, _ = _bursts({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"})
    assert not applied
