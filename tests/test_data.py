"""src.data: parallel jobs that find MNIST missing download it once."""

import multiprocessing
import shutil
import time
from pathlib import Path

import torchvision.datasets

from src.data import load_mnist
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
