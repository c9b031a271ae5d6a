"""Whether a process still runs, from /proc (standard library only: cheap to import anywhere)."""

from pathlib import Path


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None when no such process
    is running; a zombie (ended, not yet reaped: PID 1 here does not reap orphans) counts as ended."""
    stat = read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else start
