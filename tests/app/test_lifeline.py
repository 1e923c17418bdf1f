"""app/lifeline.py: a child set to die with its parent (PR_SET_PDEATHSIG) is gone once the parent is killed."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest

from tests.helpers.factories import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")

# a parent that starts `sleep` (a binary, not Python: set before exec) tied to it, prints its pid, then waits
PARENT = """
import functools, os, signal, subprocess, sys
from app.lifeline import die_with_parent
child = subprocess.Popen(["sleep", "600"], preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, os.getpid()))
print(child.pid, flush=True)
child.wait()
"""


def test_a_child_dies_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert child.is_running() and child.ppid() == parent.pid
        parent.kill()
        parent.wait(30)
        wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 30, "the child to die")
    finally:
        parent.kill()
        if child.is_running():
            child.kill()


def test_a_parent_gone_before_the_call_sends_the_signal_at_once():
    """`parent_pid` not our parent any more (it died between fork and prctl): the signal comes at once."""
    code = "import signal, time; from app.lifeline import die_with_parent; die_with_parent(signal.SIGTERM, 1); time.sleep(60)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -signal.SIGTERM
