"""What real servers need in a test session: a free port, an unprivileged user, and a clear skip or fail.

Servers from Debian's packages (PostgreSQL, SLURM's daemons, munge) are started by the tests as their own
child processes in throwaway directories, and stopped at the end. Where a server is not installed, the tests
that need it are skipped with the reason; under CI (CI=true), where .ci/run installs them, that is a failure.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def missing(what: str, install: str) -> None:
    """Skip (or under CI fail) a test whose server is not installed."""
    message = f"{what} is not installed here ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_user(user: str | None, command: list[str]) -> list[str]:
    """The command run as `user` when this process is root (servers refuse to run as root)."""
    if user is None or os.geteuid() != 0:
        return command
    return ["runuser", "-u", user, "--", *command]


def owned_tempdir(prefix: str, user: str | None) -> Path:
    """A temporary directory outside pytest's private (0700) tree, owned by `user` when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:g} s")


def process_state(pid: int) -> str | None:
    """A process's state letter from /proc (Z: ended but not reaped; PID 1 here reaps no orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None


def processes_of_session(session: int) -> dict[int, str]:
    """The processes of a session and their states, zombies included."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            found[int(stat.parent.name)] = fields[0]
    return found


def live_processes_of_session(session: int) -> list[int]:
    """Processes of a session that are not zombies (this container's PID 1 does not reap orphans)."""
    return [pid for pid, state in processes_of_session(session).items() if state != "Z"]


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def http_json(url: str, body: dict | None = None, timeout: float = 30):
    """GET (or POST a JSON body to) a local server; the decoded JSON answer."""
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def start_web_server(command: list[str], probe_url: str, log: Path, timeout: float = 120) -> subprocess.Popen:
    """A web server (TensorBoard, optuna-dashboard) as a child process, once `probe_url` answers."""
    import urllib.error

    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def answers() -> bool:
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            http_json(probe_url, timeout=5)
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    wait_until(answers, timeout, " ".join(command[:2]))
    return server
