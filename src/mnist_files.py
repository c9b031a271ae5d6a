"""MNIST's files in torchvision's layout, as far as they can be read without loading them (torch-free)."""

import struct
from pathlib import Path

RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def training_images(root: Path) -> int | None:
    """How many images the (uncompressed) training labels file says it holds; None when it is not there
    or cannot tell (the run then reads the files and reports what is wrong with them)."""
    try:
        with open(raw_dir(root) / RAW_FILES["train_labels"], "rb") as f:
            header = f.read(8)
    except OSError:
        return None
    if len(header) < 8 or header[:4] != b"\x00\x00\x08\x01":
        return None
    return struct.unpack(">I", header[4:])[0]
