"""src/interrupts.py: an interruption raised inside a finalizer is not lost; a terminal's hangup ends a
command as Ctrl-C does, unless SIGHUP is ignored (nohup)."""

import contextlib
import fcntl
import os
import pty
import select
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


class Terminal:
    """`command` run by a shell in a terminal of its own (a pseudo-terminal: its output, the shell its session
    leader), as a user starts it from a terminal or over ssh. A thread reads the terminal's output into
    tmp_path/terminal.txt (a terminal nobody reads would stop the command once its buffer is full), and owns
    the terminal's master end: closing it hangs the terminal up. Closed by another thread while this one
    waits in a read, the end stayed open until the command next wrote (seconds, while a job imports torch)."""

    def __init__(self, command: list[str], tmp_path: Path, before: str = "") -> None:
        self.master, slave = pty.openpty()
        exit_code = shlex.quote(str(tmp_path / "exit_code"))
        script = f"{before}\n{shlex.join(command)}\necho $? > {exit_code}"  # the shell waits for the command
        self.shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the terminal becomes the session's
        )
        os.close(slave)
        self.output = tmp_path / "terminal.txt"
        self.closing = threading.Event()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        with self.output.open("wb") as output, contextlib.suppress(OSError):
            while not self.closing.is_set():
                if select.select([self.master], [], [], 0.02)[0]:
                    if not (chunk := os.read(self.master, 65536)):
                        break
                    output.write(chunk)
                    output.flush()
        os.close(self.master)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def hang_up(self) -> None:
        self.closing.set()
        self.reader.join(10)
        assert not self.reader.is_alive()


def process_ended(pid: int) -> bool:
    """Ended, or a zombie nobody reaps (its shell ended first; PID 1 here does not reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


STOPS = ["Ctrl-C typed", "hang-up", "SIGTERM to all"]


def stop_from_the_terminal(terminal: Terminal, stop: str) -> None:
    """Stop the command in `terminal` as `stop` says, and wait for its process to end."""
    command_pid = int(
        subprocess.run(["pgrep", "-P", str(terminal.shell.pid)], capture_output=True, text=True).stdout
    )
    if stop == "Ctrl-C typed":
        terminal.type(b"\x03")  # the terminal's interrupt character: SIGINT to its foreground process group
    elif stop == "hang-up":
        terminal.hang_up()
        assert terminal.shell.wait(60) == -signal.SIGHUP
    else:
        os.killpg(terminal.shell.pid, signal.SIGTERM)  # the command is in the shell's group (no job control)
        assert terminal.shell.wait(60) == -signal.SIGTERM
    wait_for(lambda: process_ended(command_pid), 120)
    terminal.hang_up()


@pytest.mark.parametrize("launcher", ["basic", "joblib", "batched"])
@pytest.mark.parametrize("stop", STOPS)
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
    terminal = Terminal(command, tmp_path)
    started = ["0"] if launcher == "basic" else ["0", "1"]  # the jobs that train at once have begun
    wait_for(
        lambda: (
            all((tmp_path / "sweep" / name / "metrics.csv").exists() for name in started)
            and terminal.shell.poll() is None
        )
    )
    stop_from_the_terminal(terminal, stop)
    runs = trial_dirs(tmp_path / "sweep")  # the basic launcher's second job never started: no directory
    assert [p.name for p in runs] == started
    assert all(read_json(run / "metrics.json")["status"] == "interrupted" for run in runs)
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2  # queued again
    assert all(t.user_attrs["interrupted"] for t in trials[:2])
    assert [t.system_attrs["fixed_params"] for t in trials[2:]] == [t.params for t in trials[:2]]


@pytest.mark.parametrize("launcher", ["joblib", "batched"])
@pytest.mark.parametrize("stop", STOPS)
def test_a_sweep_stopped_while_its_jobs_import_torch_leaves_no_directory_without_a_run(
    tiny_mnist, tmp_path, launcher, stop
):
    """Stopped as its jobs begin (their directories made, torch being imported in the processes they train
    in): each job ends without a run, its directory removed, its trial failed as interrupted and queued
    again. Before, both directories stayed with Hydra's files only, which compare reports as crashed runs.
    joblib: the workers' imports were outside the job's handling of interruptions; Ctrl-C aborted the
    batch, SIGTERM and SIGHUP ended the workers (5 of 5 Ctrl-Cs). batched: the jobs' directories are made in
    the sweep's process, and nothing removed them (3 of 10 Ctrl-Cs at random moments)."""
    extra = (f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2", "trainer.epochs=300", "logger=none")
    command = [sys.executable, "-m", "src.train", *optuna_sweep_args(tiny_mnist, tmp_path, "sweep", *extra)]
    terminal = Terminal(command, tmp_path)
    began = [tmp_path / "sweep" / name / ".hydra" for name in ("0", "1")]
    wait_for(lambda: all(path.exists() for path in began) and terminal.shell.poll() is None)
    assert not (tmp_path / "sweep" / "0" / "metrics.csv").exists()  # (no epoch yet: still importing)
    stop_from_the_terminal(terminal, stop)
    assert trial_dirs(tmp_path / "sweep") == []
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert all(t.user_attrs["interrupted"] for t in trials[:2])


def test_a_run_started_with_sighup_ignored_goes_on_after_its_terminal_hangs_up(tiny_mnist, tmp_path):
    """`nohup` (or the shell's `trap '' HUP`) makes a command outlive its terminal: that stays so."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "src.train", f"hydra.run.dir={run}", *tiny_data_overrides(tiny_mnist),
               "trainer.epochs=40", "trainer.batch_size=8", "logger=none"]  # fmt: skip
    terminal = Terminal(command, tmp_path, before="trap '' HUP")
    wait_for(lambda: (run / "metrics.csv").exists() and terminal.shell.poll() is None)
    terminal.hang_up()
    terminal.shell.wait(300)  # the shell ignores SIGHUP too, and waits for the run
    assert (tmp_path / "exit_code").read_text() == "0\n"
    assert read_json(run / "metrics.json")["status"] == "completed"


# A joblib worker as its first job arrives: unpickling the job imports src.sweep_process, then Hydra makes
# the job's directory, then the job's function runs.
FIRST_JOB = """
import os, signal, sys, time
import joblib
from src.sweep_process import SWEEP_PROCESS_ENV
os.environ[SWEEP_PROCESS_ENV] = "{pid}.0"  # as the sweeper names its process for its workers

def first_job(signum):
    import src.sweep_process
    os.kill(os.getpid(), signum)  # before the job's function would run
    time.sleep(0.2)
    return src.sweep_process._interrupted

print("remembered", joblib.Parallel(n_jobs=2)(joblib.delayed(first_job)(int(sys.argv[1])) for _ in range(1)))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_joblib_worker_remembers_an_interruption_that_comes_before_its_first_job_runs(signum):
    """...for that job to end at once (stopped_when_sweep_process_ends). Before, SIGTERM and SIGHUP ended the
    worker, and Ctrl-C raised a KeyboardInterrupt outside any job: either way joblib aborted the batch (loky
    SIGKILLs the other workers, which may be writing their runs' files), and the job's directory stayed
    with Hydra's files only."""
    result = subprocess.run(
        [sys.executable, "-c", FIRST_JOB.format(pid=os.getpid()), str(int(signum))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "remembered [True]"


def test_an_error_that_ends_a_sweep_after_a_ctrl_c_arrived_ends_it_as_that_ctrl_c():
    """A library that turns the KeyboardInterrupt raised in its middle into an error of its own (OmegaConf
    did, as Hydra composed a job's config): the sweep still ends as interrupted, not with that error's
    traceback and exit 1. Without an interruption, an error stays what it is; the handler is restored."""
    from hydra_plugins.optuna_pruning_sweeper.child_jobs import (
        interruption_arrived,
        interruptions_kept_as_such,
    )

    def library_work() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'") from None

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as stop, interruptions_kept_as_such():
        library_work()
    assert isinstance(stop.value.__cause__, AttributeError)
    assert interruption_arrived()  # what the sweeper asks before it takes a launcher's error for a failure
    with pytest.raises(AttributeError), interruptions_kept_as_such():
        assert not interruption_arrived()
        raise AttributeError("a sweep's own error")
    assert signal.getsignal(signal.SIGINT) is before


def test_the_resource_trackers_outlive_a_hang_up():
    """loky's and multiprocessing's ignore Ctrl-C and SIGTERM; a SIGHUP killed them, and the ones started in
    their place printed a traceback for each resource joblib's workers let go, after the sweep's
    `interrupted (SIGHUP)`."""
    script = textwrap.dedent("""
        import os, signal, time
        from pathlib import Path
        from hydra_plugins.optuna_pruning_sweeper import child_jobs
        child_jobs.start_resource_trackers_deaf_to_hangups()
        tasks = Path("/proc/self/task").iterdir()
        trackers = [int(pid) for task in tasks for pid in (task / "children").read_text().split()]
        for tracker in trackers:
            os.kill(tracker, signal.SIGHUP)
        time.sleep(0.5)
        print(*(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] for pid in trackers))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() in (["S", "S"], ["S", "R"], ["R", "S"], ["R", "R"])  # alive, not zombies
