"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests (Debian's postgresql package).

initdb and the server run as the `postgres` user (PostgreSQL refuses root) in a temporary directory, with
password authentication over TCP, so the tests connect exactly as a sweep on another machine would.
"""

import glob
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers.servers import as_user, free_port, missing, owned_tempdir, remove_tree, wait_until

SERVER_USER = "postgres"
ROLE = "sweeper"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path
    port: int
    password: str  # the role's: tests pass it only through the environment

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            as_user(SERVER_USER, [str(self.bin_dir / command[0]), *command[1:]]),
            check=True,
            capture_output=True,
            text=True,
            **kwargs,
        )

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run SQL as the superuser through the cluster's private socket."""
        self.run(
            "psql",
            "-h",
            str(self.base),
            "-p",
            str(self.port),
            "-U",
            SERVER_USER,
            "-d",
            database,
            "-c",
            statement,
        )

    def start(self) -> None:
        self.run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SERVER_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.base} "
            "-c fsync=off"
        )
        self.run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.base / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        finally:
            remove_tree(self.base)

    def new_database(self) -> str:
        """A fresh database owned by the test role; its URL, without the password."""
        name = f"study_{secrets.token_hex(4)}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{name}"


def start_postgres() -> PostgresServer:
    bin_dir = postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL", "apt-get install -y postgresql")
    server = PostgresServer(
        bin_dir, owned_tempdir("pg-", SERVER_USER), free_port(), secrets.token_urlsafe(12)
    )
    server.start()
    wait_until(lambda: (server.base / f".s.PGSQL.{server.port}").exists(), 30, "PostgreSQL")
    return server
