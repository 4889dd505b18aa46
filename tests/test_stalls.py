"""StallWatch, on a real freeze of this process (SIGSTOP, SIGCONT 0.6 s later)."""

from __future__ import annotations

import os
import subprocess
import time

from tests.stalls import StallWatch


def test_a_freeze_of_the_process_is_counted_and_a_quiet_wait_is_not():
    with StallWatch() as quiet:
        time.sleep(0.5)
    assert quiet.stalled < 0.2, quiet.stalled

    with StallWatch() as frozen:
        t0 = time.monotonic()
        waker = subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep 0.6; kill -CONT {os.getpid()}"])
        waker.wait()
        took = time.monotonic() - t0
        time.sleep(0.05)  # the watch's thread wakes once after the freeze
    assert took >= 0.6 and 0.45 <= frozen.stalled <= took + 0.1, (took, frozen.stalled)
