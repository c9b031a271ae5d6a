"""src/interrupts.py: an interruption raised inside a finalizer is not lost; a terminal's hangup ends a
command as Ctrl-C does, unless SIGHUP is ignored (nohup)."""

import contextlib
import fcntl
import os
import pty
import shlex
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers.cli import REPO, read_json, tiny_data_overrides
from tests.helpers.sweeps import load_study, optuna_sweep_args, trial_dirs

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


def start_in_a_terminal(command: list[str], tmp_path: Path, before: str = "") -> tuple[subprocess.Popen, int]:
    """`command` run by a shell in a terminal of its own (a pseudo-terminal: its output, the shell its session
    leader), as a user starts it from a terminal or over ssh. Returns the shell and the terminal's master end;
    closing that end hangs the terminal up. A thread reads the terminal's output into tmp_path/terminal.txt
    (a terminal nobody reads would stop the command once its buffer is full)."""
    master, slave = pty.openpty()
    exit_code = shlex.quote(str(tmp_path / "exit_code"))
    script = f"{before}\n{shlex.join(command)}\necho $? > {exit_code}"  # the shell waits for the command
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=REPO,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the terminal becomes the session's
    )
    os.close(slave)
    output = (tmp_path / "terminal.txt").open("wb")

    def read() -> None:
        with contextlib.suppress(OSError):
            while (chunk := os.read(master, 65536)) and not output.closed:
                output.write(chunk)
                output.flush()

    threading.Thread(target=read, daemon=True).start()
    return shell, master


def process_ended(pid: int) -> bool:
    """Ended, or a zombie nobody reaps (its shell ended first; PID 1 here does not reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("launcher", ["basic", "joblib", "batched"])
@pytest.mark.parametrize("stop", ["Ctrl-C typed", "hang-up", "SIGTERM to all"])
def test_a_sweep_stopped_from_its_terminal_ends_each_run_as_interrupted(tiny_mnist, tmp_path, launcher, stop):
    """Ctrl-C typed in the terminal (SIGINT to its foreground process group), the terminal closing (its
    window, or the ssh connection dropping: its shell gets SIGHUP, and as it ends the kernel sends SIGHUP
    to the command's process group), or SIGTERM to the shell's process group, the command's too (`kill
    -TERM -PGID`, a session's processes stopped at shutdown): the shell ends at once, and the kernel sends
    SIGHUP after the SIGTERM. Before, on a hang-up the sweep died at once: its runs left no metrics.json,
    its trials stayed RUNNING until another sweep found the worker gone. With joblib, a run was left without
    metrics.json on Ctrl-C too (4 of 10 tries): the sweep's KeyboardInterrupt made joblib abort the batch,
    and loky SIGKILLed the workers while they wrote their files (child_jobs.py); and on SIGTERM to all
    (4 of 6), whose SIGHUP the sweep took for a second interruption."""
    extra = (f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2", "trainer.epochs=300", "logger=none")
    command = [sys.executable, "-m", "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", *extra)]
    shell, master = start_in_a_terminal(command, tmp_path)
    started = ["0"] if launcher == "basic" else ["0", "1"]  # the jobs that train at once have begun
    wait_for(
        lambda: (
            all((tmp_path / "sweep" / name / "metrics.csv").exists() for name in started)
            and shell.poll() is None
        )
    )
    sweep_pid = int(subprocess.run(["pgrep", "-P", str(shell.pid)], capture_output=True, text=True).stdout)
    if stop == "Ctrl-C typed":
        os.write(master, b"\x03")  # the terminal's interrupt character
        wait_for(lambda: process_ended(sweep_pid), 120)
        os.close(master)
    elif stop == "hang-up":
        os.close(master)  # the terminal hangs up
        assert shell.wait(60) == -signal.SIGHUP
        wait_for(lambda: process_ended(sweep_pid), 120)
    else:
        os.killpg(shell.pid, signal.SIGTERM)  # the command is in the shell's group (no job control in it)
        assert shell.wait(60) == -signal.SIGTERM
        wait_for(lambda: process_ended(sweep_pid), 120)
        os.close(master)
    runs = trial_dirs(tmp_path / "sweep")  # the basic launcher's second job never started: no directory
    assert [p.name for p in runs] == started
    assert all(read_json(run / "metrics.json")["status"] == "interrupted" for run in runs)
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2  # queued again
    assert all(t.user_attrs["interrupted"] for t in trials[:2])
    assert [t.system_attrs["fixed_params"] for t in trials[2:]] == [t.params for t in trials[:2]]


def test_a_run_started_with_sighup_ignored_goes_on_after_its_terminal_hangs_up(tiny_mnist, tmp_path):
    """`nohup` (or the shell's `trap '' HUP`) makes a command outlive its terminal: that stays so."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "src.train", f"hydra.run.dir={run}", *tiny_data_overrides(tiny_mnist),
               "trainer.epochs=40", "trainer.batch_size=8", "logger=none"]  # fmt: skip
    shell, master = start_in_a_terminal(command, tmp_path, before="trap '' HUP")
    wait_for(lambda: (run / "metrics.csv").exists() and shell.poll() is None)
    os.close(master)
    shell.wait(300)  # the shell ignores SIGHUP too, and waits for the run
    assert (tmp_path / "exit_code").read_text() == "0\n"
    assert read_json(run / "metrics.json")["status"] == "completed"
