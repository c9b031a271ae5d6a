"""Where a second core could help batched trials: 1,000 stacked training steps of K linear trials (the
default model, a batch of 64 random images, each trial with torch's fused Adam), in one process with 2 threads
and with 1, against two processes of K/2 trials with one thread each, side by side.

    python bench/stacked_step_processes.py [--trials 20] [--steps 1000]

Prints the seconds each configuration took; the two-process line gives each process's time (they run at
once, so the slower one is the wall time of the pair).
"""

import argparse
import subprocess
import sys
import time

from common import REPO


def steps_seconds(trials: int, threads: int, steps: int) -> float:
    import torch

    from src.batched_runs import stacked_step
    from src.models import SimpleNet
    from src.stacked_model import StackedModel
    from src.trial_optimizers import TrialOptimizer

    torch.set_num_threads(threads)
    stacked = StackedModel([SimpleNet()] * trials, "layers")
    optimizers = [TrialOptimizer(torch.optim.Adam(stacked.trial_views(k), fused=True)) for k in range(trials)]
    images, labels = torch.rand(64, 28, 28), torch.randint(0, 10, (64,))
    for _ in range(20):  # warm-up: the optimizers' state, the allocator
        stacked_step(stacked, optimizers, images, labels)
    started = time.perf_counter()
    for _ in range(steps):
        stacked_step(stacked, optimizers, images, labels)
    return time.perf_counter() - started


def in_a_process(trials: int, threads: int, steps: int) -> subprocess.Popen:
    code = (
        "import sys; sys.path[:0] = ['bench', '.']; from stacked_step_processes import steps_seconds; "
        f"print(steps_seconds({trials}, {threads}, {steps}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)


def seconds(processes: list[subprocess.Popen]) -> list[float]:
    outputs = [process.communicate()[0] for process in processes]
    return [round(float(output.strip()), 2) for output in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    trials, steps, half = args.trials, args.steps, args.trials // 2
    for threads in (2, 1):
        took = seconds([in_a_process(trials, threads, steps)])
        print(f"one process, {trials} trials, {threads} thread(s): {took} s")
    pair = seconds([in_a_process(half, 1, steps) for _ in range(2)])
    print(f"two processes of {half} trials, 1 thread each, at once: {pair} s")


if __name__ == "__main__":
    main()
