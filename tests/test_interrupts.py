"""src/interrupts.py: an interruption raised inside a finalizer is not lost."""

import signal
import subprocess
import sys
import textwrap

from tests.helpers.cli import REPO

# A Ctrl-C that lands while garbage collection runs a finalizer (in the sweep that lost one, the weakref
# callback of a WeakKeyDictionary): its KeyboardInterrupt is raised inside the finalizer.
PROGRAM = """
import signal, sys, time
from src.interrupts import report_interrupts_in_one_line
report_interrupts_in_one_line()
{setup}

class Finalized:
    def __del__(self):
        raise {raised}

Finalized()
for _ in range(200):
    time.sleep(0.001)
print("went on", signal.getsignal(signal.SIGINT).__name__, flush=True)
"""


def run(raised: str = "KeyboardInterrupt", setup: str = "") -> subprocess.CompletedProcess:
    program = textwrap.dedent(PROGRAM).format(raised=raised, setup=setup)
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_ctrl_c_raised_inside_a_finalizer_still_stops_the_command():
    """Python prints "Exception ignored in ..." for it and goes on; here it is raised again right after."""
    result = run()
    assert result.returncode == -signal.SIGINT, result.stderr
    assert "went on" not in result.stdout
    assert result.stderr == "interrupted (Ctrl-C)\n"


def test_it_is_raised_again_when_the_process_already_ignores_a_second_ctrl_c():
    """A batch's process ignores Ctrl-C once the first one reached it (interrupt_once): that first one must
    not be dropped because it was lost in a finalizer. The handler is left as it was."""
    setup = "def ignored(signum, frame): pass\nsignal.signal(signal.SIGINT, ignored)"
    result = run(setup=setup)
    assert result.returncode == -signal.SIGINT, result.stderr
    assert "went on" not in result.stdout

    caught = setup + (
        "\nimport atexit\n"
        "atexit.register(lambda: print('handler after', signal.getsignal(signal.SIGINT).__name__))"
    )
    result = run(setup=caught)
    assert "handler after ignored" in result.stdout


def test_other_errors_in_finalizers_are_still_reported_and_ignored_as_python_does():
    result = run(raised="ValueError('from a finalizer')")
    assert result.returncode == 0, result.stderr
    assert "went on default_int_handler" in result.stdout
    assert "Exception ignored in" in result.stderr and "ValueError: from a finalizer" in result.stderr
