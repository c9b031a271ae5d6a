"""src.data: parallel jobs that find MNIST missing download it once; the splits as model inputs."""

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torchvision.datasets

from src.data import load_mnist
from src.errors import DataError
from src.mnist_files import RAW_FILES, raw_dir


class SlowFakeMnistDownload:
    """Stands in for torchvision's MNIST(download=True): copies the files in slowly, one byte-run at a
    time, and counts how often it ran, so that two downloads at once would show."""

    source: Path
    count_file: Path

    def __init__(self, root: str, train: bool, download: bool) -> None:
        with open(self.count_file, "a") as count:
            count.write("download\n")
        target = raw_dir(Path(root))
        for key, name in RAW_FILES.items():
            if key.startswith("train" if train else "test"):
                content = (raw_dir(self.source) / name).read_bytes()
                with open(target / name, "wb") as f:  # written in pieces, like a download
                    for start in range(0, len(content), len(content) // 4 + 1):
                        f.write(content[start : start + len(content) // 4 + 1])
                        f.flush()
                        time.sleep(0.05)


def load_in_a_job(root: Path, source: Path, count_file: Path, results) -> None:
    SlowFakeMnistDownload.source, SlowFakeMnistDownload.count_file = source, count_file
    torchvision.datasets.MNIST = SlowFakeMnistDownload
    data = load_mnist(root, download=True, offline_fallback=False, val_size=200, split_seed=0)
    results.put((data.source, len(data.train), len(data.test)))


def test_parallel_jobs_download_once_and_all_read_complete_files(tiny_mnist, tmp_path):
    root, count_file = tmp_path / "data", tmp_path / "downloads.txt"
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    jobs = [
        context.Process(target=load_in_a_job, args=(root, tiny_mnist, count_file, results)) for _ in range(3)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
        assert job.exitcode == 0
    assert [results.get(timeout=5) for _ in jobs] == [("mnist", 1000, 300)] * 3
    assert count_file.read_text().splitlines() == ["download", "download"]  # train and test, once each
    shutil.rmtree(root)


def test_images_mapped_from_the_page_cache_convert_alike_and_stay_mapped_only_until_converted(tiny_mnist):
    """The batched launcher's data (LoadedData) maps the files instead of reading them into memory of its own:
    the same model inputs, the files untouched, no warning (a read-only array would make torch warn), and
    no mapping left once the inputs are made."""
    import gc
    import warnings

    files = {name: (raw_dir(tiny_mnist) / name).read_bytes() for name in RAW_FILES.values()}
    read = load_mnist(tiny_mnist, download=False, offline_fallback=False, val_size=200, split_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapped = load_mnist(
            tiny_mnist, download=False, offline_fallback=False, val_size=200, split_seed=0, mapped=True
        )
        assert str(raw_dir(tiny_mnist) / RAW_FILES["train_images"]) in Path("/proc/self/maps").read_text()
        inputs = mapped.standardized().as_inputs()
    expected = read.standardized().as_inputs()
    for got, want in zip(
        (inputs.train, inputs.val, inputs.test), (expected.train, expected.val, expected.test), strict=True
    ):
        assert torch.equal(got.images, want.images) and torch.equal(got.rows, want.rows)
        assert torch.equal(got.labels, want.labels)
    del mapped
    gc.collect()
    assert str(raw_dir(tiny_mnist)) not in Path("/proc/self/maps").read_text()
    assert files == {name: (raw_dir(tiny_mnist) / name).read_bytes() for name in RAW_FILES.values()}


@pytest.mark.parametrize("standardize", [False, True])
def test_splits_converted_to_model_inputs_once_give_the_same_batches_bit_for_bit(tiny_mnist, standardize):
    data = load_mnist(tiny_mnist, download=False, offline_fallback=False, val_size=200, split_seed=0)
    data = data.standardized() if standardize else data
    inputs = data.as_inputs()
    assert inputs.train.images.dtype == torch.float32
    assert inputs.train.images is inputs.val.images  # the splits of one file share one converted tensor
    generator = torch.Generator().manual_seed(3)
    pairs = zip((data.train, data.val, data.test), (inputs.train, inputs.val, inputs.test), strict=True)
    for split, converted in pairs:
        assert len(converted) == len(split)
        for positions in (slice(0, 64), slice(100, 131), slice(None)):
            for got, expected in zip(converted.batch(positions), split.batch(positions), strict=True):
                assert got.dtype == expected.dtype and torch.equal(got, expected)
        shuffled = converted.shuffled(generator.clone_state()).batch(slice(0, 64))
        assert torch.equal(shuffled[0], split.shuffled(generator.clone_state()).batch(slice(0, 64))[0])
    assert inputs.as_inputs().train.images is inputs.train.images  # converted already: kept


class UnreachableMnist:
    """Stands in for torchvision's MNIST(download=True) without a network: makes its folders, as
    torchvision does, then fails."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        raw_dir(Path(root)).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")


def test_a_failed_download_leaves_no_folders_where_there_were_none(tmp_path, monkeypatch):
    """A mistyped data.root (`data.root=../shared/dta`) used to keep an empty MNIST/raw/ and its lock
    file; a directory that was there stays, with what it held."""
    monkeypatch.setattr(torchvision.datasets, "MNIST", UnreachableMnist)
    mistyped = tmp_path / "dta" / "deeper"
    with pytest.raises(DataError, match="MNIST not found in"):
        load_mnist(mistyped, download=True, offline_fallback=False, val_size=200, split_seed=0)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "mine"
    (existing / "notes.txt").parent.mkdir()
    (existing / "notes.txt").write_text("kept")
    with pytest.raises(DataError):
        load_mnist(existing, download=True, offline_fallback=False, val_size=200, split_seed=0)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


def test_a_job_whose_folders_another_jobs_failed_download_removed_makes_them_again(tmp_path, monkeypatch):
    """Two jobs with a data.root without MNIST: the first to fail removes the folders it made, which the
    other had just found there, before that one opened its lock in them (it crashed with FileNotFoundError
    on `.download.lock`). The other makes them again and falls back as the first did."""
    monkeypatch.setattr(torchvision.datasets, "MNIST", UnreachableMnist)
    root = tmp_path / "nodata"
    open_file, removed = os.open, []

    def after_the_other_jobs_cleanup(path, *args, **kwargs):
        if str(path).endswith(".download.lock") and not removed:  # just before the lock file is opened
            shutil.rmtree(root)
            removed.append(path)
        return open_file(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", after_the_other_jobs_cleanup)
    data = load_mnist(root, download=True, offline_fallback=True, val_size=200, split_seed=0)
    assert removed and data.source != "mnist" and len(data.train) > 0
    assert not root.exists()  # the folders this job made again are gone too
