"""src.fast_exit: leave without the interpreter's teardown only when no child process needs it."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_python

from src.fast_exit import exit_code, has_child_processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task/*/children")
def test_child_processes_are_seen_while_they_live():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert has_child_processes()
    finally:
        child.kill()
        child.wait()
    assert not has_child_processes()


def test_exit_code_follows_sys_exit():
    assert exit_code(SystemExit()) == 0
    assert exit_code(SystemExit(2)) == 2
    assert exit_code(SystemExit("a message")) == 1


def test_status_and_output_survive_the_fast_exit(tmp_path):
    script = (
        "import sys; from src.fast_exit import run_then_exit\n"
        "def main():\n"
        "    print('flushed ' * 1000)\n"
        "    sys.exit(3)\n"
        "run_then_exit(main)\n"
    )
    result = run_python(script, tmp_path)
    assert result.returncode == 3
    assert result.stdout.count("flushed") == 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launch process is forked")
def test_the_batched_launchers_launch_process_is_stopped_and_the_exit_stays_fast(tmp_path):
    torn_down = tmp_path / "torn down"
    script = (
        "import atexit\n"
        "from hydra_plugins.batched_launcher.launch_process import LaunchProcess\n"
        "from src.fast_exit import run_then_exit\n"
        "process = LaunchProcess(lambda collected, settings: [], [])\n"
        "print(process.pid, flush=True)\n"
        f"atexit.register(lambda: open({str(torn_down)!r}, 'w').close())\n"
        "run_then_exit(lambda: None)\n"
    )
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not Path(f"/proc/{int(result.stdout.split()[0])}").exists()  # stopped and reaped
    assert not torn_down.exists()  # left with os._exit, as without the launch process
