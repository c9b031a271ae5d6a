"""Running the project as a user does (the CLI as a subprocess) and reading what it wrote."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


TINY_TRAIN, TINY_TEST, TINY_VAL = 1200, 300, 200


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as in the MNIST distribution."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


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


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under a directory (by its path relative to it) with its bytes: what a refused command must
    leave as it was."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


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
