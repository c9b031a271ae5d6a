"""A one-node SLURM cluster on this machine for the tests (Debian's slurmctld, slurmd, slurm-client, munge).

munged (as user munge, unless one is running), slurmctld and slurmd run as this test session's own child
processes, with a configuration in a temporary directory: one node `localhost` at 127.0.0.1 sized from
nproc and half the real memory (a node larger than the machine drains, and jobs then wait forever), cores
and memory as consumable resources with a default memory per CPU (else one job takes all memory and jobs
run one at a time), task/affinity to bind each job to its CPUs, no accounting.
"""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.servers import (
    free_port,
    missing,
    owned_tempdir,
    process_state,
    remove_tree,
    stop_process,
    wait_until,
)

PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged", "munge")
MUNGE_SOCKET_DIR = Path("/run/munge")


def node_memory_mb() -> int:
    total_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return total_kb // 1024 // 2


CONFIG = """\
ClusterName=tests
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={mem_per_cpu}
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory}
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    base: Path
    cpus: int
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to submit to this cluster (sbatch finds it through SLURM_CONF)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True).stdout

    def is_idle(self) -> bool:
        try:
            return self.command("sinfo", "-h", "-o", "%T").strip() == "idle"
        except subprocess.CalledProcessError:
            return False

    def queue(self) -> list[str]:
        return self.command("squeue", "-h", "-o", "%i").split()

    def start(self) -> None:
        memory = node_memory_mb()
        (self.base / "state").mkdir()
        (self.base / "spool").mkdir()
        self.conf.write_text(
            CONFIG.format(
                base=self.base,
                ctld_port=free_port(),
                d_port=free_port(),
                cpus=self.cpus,
                memory=memory,
                mem_per_cpu=memory // self.cpus // 2,
            )
        )
        if not munge_works():
            self.daemons.append(start_munged(self.base))
            wait_until(munge_works, 20, "munged")
        for daemon in (
            ["slurmctld", "-D", "-f", str(self.conf)],
            ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)],
        ):
            log = open(self.base / f"{daemon[0]}.out", "w")  # noqa: SIM115  (the daemon's, until it stops)
            self.daemons.append(subprocess.Popen(daemon, stdout=log, stderr=subprocess.STDOUT, env=self.env))
        wait_until(self.is_idle, 60, "the SLURM node")

    def stop(self) -> None:
        """Cancel every job, wait for an empty queue, then stop the daemons."""
        try:
            if jobs := self.queue():
                self.command("scancel", *jobs)
            deadline = time.monotonic() + 60
            while self.queue() and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for daemon in reversed(self.daemons):
                stop_process(daemon)
                assert process_state(daemon.pid) in (None, "Z")
            remove_tree(self.base)


def munge_works() -> bool:
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    if encoded.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def start_munged(base: Path) -> subprocess.Popen:
    """munged in the foreground as user munge (it refuses root), on the default socket slurm uses."""
    MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
    log = open(base / "munged.out", "w")  # noqa: SIM115
    return subprocess.Popen(
        ["runuser", "-u", "munge", "--", "munged", "-F"], stdout=log, stderr=subprocess.STDOUT
    )


def start_slurm() -> SlurmCluster:
    if not all(shutil.which(program) for program in PROGRAMS):
        missing("SLURM", "apt-get install -y slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        missing(
            "a SLURM cluster of the tests' own (slurmd runs as root)", "run the tests as root, as CI does"
        )
    cluster = SlurmCluster(owned_tempdir("slurm-", None), os.cpu_count() or 1)
    cluster.start()
    return cluster
