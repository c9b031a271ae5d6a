"""The training loop: train an epoch, evaluate, record one row per epoch.

Images stay uint8 in memory and become float batches on the fly (Split.batch): the whole
training set as float32 would cost 170 MB more for no speed gain.
"""

import math
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.data import MnistSplits, Split
from src.errors import TrainingDiverged
from src.run_record import Column, EpochRecord
from src.schedules import Stepping


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    batch_size: int,
    generator: torch.Generator,
    show_progress: bool,
    after_step: Callable[[], None],
) -> float:
    """Mean training loss over the epoch; raises TrainingDiverged on the first non-finite loss.
    `after_step` follows every optimizer step (a per-step scheduler steps there)."""
    model.train()
    shuffled = data.shuffled(generator)
    total_loss = 0.0
    n_batches = math.ceil(len(data) / batch_size)
    with tqdm(total=n_batches, disable=not show_progress, leave=False, unit="batch") as progress:
        for start in range(0, len(data), batch_size):
            inputs, batch_labels = shuffled.batch(slice(start, start + batch_size))
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs), batch_labels)
            loss.backward()
            optimizer.step()
            after_step()
            batch_loss = loss.item()
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(
                    f"training diverged: loss is {batch_loss} at batch {start // batch_size + 1}"
                )
            total_loss += batch_loss * len(batch_labels)
            progress.update()
    return total_loss / len(data)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy in percent) of the model on a split."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        inputs, labels = data.batch(slice(start, start + batch_size))
        logits = model(inputs)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
    return total_loss / len(data), 100.0 * correct / len(data)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stepping: Stepping,
    data: MnistSplits,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    generator: torch.Generator,
    on_epoch_end: Callable[[EpochRecord], None],
    first_epoch: int = 1,
) -> None:
    """Train epochs first_epoch..epochs, the scheduler stepped as `stepping` says (after every optimizer
    step, or once per epoch after its evaluation, with a metric for a metric-driven one).

    `generator` shuffles the training set (one permutation per epoch). `on_epoch_end` receives every
    finished epoch; it may stop the run by raising (pruning).
    """
    show_progress = sys.stdout.isatty()
    for epoch in range(first_epoch, epochs + 1):
        lr = stepping.lr
        started = time.perf_counter()
        train_loss = train_one_epoch(
            model, optimizer, data.train, batch_size, generator, show_progress, stepping.after_optimizer_step
        )
        train_time = time.perf_counter() - started
        val_loss, val_acc = evaluate(model, data.val, eval_batch_size)
        _, test_acc = evaluate(model, data.test, eval_batch_size)
        stepping.after_epoch({Column.VAL_LOSS: val_loss, Column.VAL_ACC: val_acc})
        on_epoch_end(
            EpochRecord(
                epoch=epoch,
                lr=lr,
                train_loss=train_loss,
                val_loss=val_loss,
                val_acc=val_acc,
                test_acc=test_acc,
                train_time_s=train_time,
                epoch_time_s=time.perf_counter() - started,
                lr_last=stepping.last_step_lr,
            )
        )
