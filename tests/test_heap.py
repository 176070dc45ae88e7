"""The recorder's allocator settings (``recording.heap``): freed frames and chunk buffers stay
with the process for the next ones instead of going back to the kernel and faulting in again."""
import ctypes
import ctypes.util
import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys, threading
from robot_imitation.recording.heap import keep_freed_memory

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
out = {}

def work():
    # 64 frames of 0.9 MB (VGA rgb8) held, then freed, as a recorder's queue fills and drains
    frames = [b"x" * 921_600 for _ in range(64)]  # written: resident
    out["held"] = rss_kb()
    del frames[:]
    out["freed"] = rss_kb()

t = threading.Thread(target=work)  # the recorder's writer is a thread (its own arena)
t.start(); t.join()
out["applied"] = applied
print(json.dumps(out))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not glibc(), reason="the thresholds are glibc's (mallopt)")
def test_freed_frames_stay_with_the_process_for_the_next_ones():
    default, kept = probe("default"), probe("keep")
    assert kept["applied"] is True
    held = 64 * 921_600 // 1024
    # glibc's defaults: each frame is its own mapping, unmapped when freed
    assert default["held"] - default["freed"] > 0.9 * held, default
    # the recorder's settings: the frames come from the heap, and the freed memory stays
    assert kept["held"] - kept["freed"] < 0.1 * held, kept
