"""Trials trained together (hydra/launcher=batched): one pass over the data for a whole batch of runs.

Under the batched launcher each job defers its run (src/deferred_job.py) after Hydra has written its
directory, .hydra/ and log; the launcher then has the batch's runs trained together
(BatchedRun.run_together, in its launch process). Runs that differ only in their optimizer, scheduler and
seed (same model, data, batch size, device) form a group, split by hydra.launcher.max_batch and by memory;
a group trains as one stacked model (src/stacked_model.py), each trial with torch's own optimizer and
scheduler on its slice (src/trial_optimizers.py).

Per trial, as in a run alone: the same initial weights and shuffles (its seed's: trials of one seed share
them, each other seed's trials are a block of the stack that sees its own shuffle), the same dropout masks
(one draw of a run's shape, from its seed's generator), the same epoch callbacks and files
(src/epoch_callbacks.py, run.finishing_run). A trial that is pruned, diverges or fails leaves the group
at once; the others go on. What differs from a run alone: float rounding (the trials' matmuls are one
wider matmul), and the times: each epoch's train and epoch time is the group's divided by its trials.

A group trains one trial at a time instead (run.train, the basic launcher's way), with a log line saying
why, when it has one run, when its model can't be stacked, or when a few timed steps show that stacking is
not faster (large models on few cores: their matmuls are already efficient).
"""

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.batched_launcher.collector import imports_without_collector
from hydra_plugins.batched_launcher.deferral import BatchSettings
from src.components import build_model, build_optimizer
from src.cpu_share import CpuShare, job_cpus
from src.data import MnistSplits, Split, raw_files_identity
from src.deferred_job import DeferredJob, LogFile
from src.dynamo_on_demand import step_without_dynamo
from src.epoch_callbacks import RunContext, report_epoch_together
from src.errors import TrainingDiverged, UserInputError
from src.hardware import resolve_device, threads_for_this_job
from src.run import (
    RunEnd,
    epoch_callbacks,
    finishing_run,
    load_data,
    log_data,
    prunable_from,
    run_context,
    train,
)
from src.run_record import Column, EpochRecord
from src.schedule_config import lr_not_used, monitor
from src.schedules import Stepping, build_scheduler, constant_epochs, fill_in_steps
from src.shared_prefix import resolved_except
from src.stacked_model import (
    Block,
    Inputs,
    StackedModel,
    labels_per_trial,
    parameter_bytes,
    stack_model,
    trial_losses,
)
from src.sweep_process import stopped_when_sweep_process_ends
from src.trial_optimizers import TrialOptimizer, step_trials
from src.trial_processes import in_processes, split

log = logging.getLogger(__name__)

# What the trials of one group may differ in; everything else must be equal (a new option splits groups).
PER_TRIAL = (
    "hydra",
    "optimizer",
    "scheduler",
    "steps",
    "trainer.epochs",
    "trainer.prefix_cache",
    "logger",
    "optimized_metric",
    "prune_from",
    "overwrite",
    "schedule_families",
    "trainer.seed",
)
TIMED_STEPS = 3  # steps timed each way before a group trains stacked
MEMORY_SHARE = 0.5  # of the memory available, what a group's stacked model may use


@dataclass
class BatchedRun:
    """One job's run, deferred until its batch trains (Hydra has made its directory and .hydra/)."""

    cfg: DictConfig
    context: RunContext
    started: float = field(default_factory=time.perf_counter)
    # (training set size, constant epochs or why the run cannot train with it), once checked (fit_for)
    checked: tuple[int, int | Exception] | None = field(default=None, repr=False)

    @property
    def constant_epochs(self) -> int | None:
        """Found before its batch trains (fit_for: checked_constant_epochs); None until then."""
        if self.checked is None or isinstance(self.checked[1], Exception):
            return None
        return self.checked[1]

    @classmethod
    def for_job(cls, job: DeferredJob) -> "BatchedRun":
        """The deferred job's run: its context made as the job would have made it (its trial opened here)."""
        with job.as_running():
            context = run_context(job.cfg)
        context.log = job_logger(context.job, job.log_files)
        return cls(job.cfg, context, job.started)

    def load_data_and_check_early(self) -> None:
        """Load the run's data for its batch now (SWEEP_DATA), and check the run against it (fit_for),
        while the sweep's process runs the batch's later jobs, instead of once the batch is whole (for 20
        trials on full MNIST, 0.1 s for the data and 0.07 s for the checks, off the way to the first epoch
        when this process keeps pace with the jobs). Should loading fail, it fails again, and is reported,
        where the run's group trains."""
        with contextlib.suppress(Exception):
            data = SWEEP_DATA.get(self.cfg, resolve_device(self.cfg.trainer.device))
            self.fit_for(len(data.train))

    def fit_for(self, train_size: int) -> Exception | None:
        """Fill in the run's step counts for a training set of this size and find its constant epochs
        (checked_constant_epochs, which builds its optimizer and scheduler on a probe); once per size. The
        error that keeps the run from training (a warmup longer than the run, SGD's momentum=-1): its
        trial fails alone."""
        if self.checked is None or self.checked[0] != train_size:
            try:
                fill_in_steps(self.cfg, train_size)
                self.checked = (train_size, checked_constant_epochs(self.cfg))
            except Exception as error:
                self.checked = (train_size, error)
        return self.checked[1] if isinstance(self.checked[1], Exception) else None

    @property
    def group_key(self) -> str:
        """Runs with equal keys can train as one stacked model."""
        config = resolved_except(self.cfg, PER_TRIAL)
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def run_together(cls, runs: list["BatchedRun"], settings: BatchSettings) -> list[Any]:
        """Each run's value for the sweeper (its optimized metric), or the exception that ended it."""
        outcomes: dict[int, Any] = {}
        groups: dict[str, list[int]] = {}
        for index, run in enumerate(runs):
            groups.setdefault(run.group_key, []).append(index)
        try:
            # in the launcher's launch process (a child of the sweep's), stopped as a job is in a child
            with stopped_when_sweep_process_ends():
                for members in groups.values():
                    outcomes.update(train_group([runs[i] for i in members], members, settings, SWEEP_DATA))
        finally:
            SWEEP_DATA.keep_used()
            for run in runs:
                close_job_logger(run.context.log)
        return [outcomes[i] for i in range(len(runs))]


def job_logger(job: str, log_files: list[LogFile]) -> logging.Logger:
    """A logger that writes to this job's own log files only: in a group, each trial's lines go to its own
    run's log, and the console gets the group's lines."""
    logger = logging.getLogger(f"{__name__}.job{job}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for log_file in log_files:
        own = logging.FileHandler(log_file.path, mode="a")
        own.setFormatter(log_file.formatter)
        logger.addHandler(own)
    return logger


def close_job_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def run_alone(run: BatchedRun) -> Any:
    """The run as the basic launcher would train it; its value or the exception that ended it."""
    with imports_without_collector():  # its loop's step() imports torch._dynamo (src/dynamo_on_demand.py)
        import torch._dynamo  # noqa: F401
    try:
        return train(run.cfg, run.context)
    except Exception as error:
        return error


class LoadedData:
    """The data of a batch's groups, loaded once for all groups that read the same data onto the same
    device, its images converted to model inputs once (MnistSplits.as_inputs), and kept for the next batch
    of the sweep (the launch process serves one batch after another: 0.2 s a batch of full MNIST); data that
    a batch did not use is dropped after it. Its files are part of the key: files replaced in the middle of a
    sweep are read again."""

    def __init__(self) -> None:
        self.splits: dict[str, MnistSplits] = {}
        self.used: set[str] = set()

    def get(self, cfg: DictConfig, device: torch.device) -> MnistSplits:
        files = raw_files_identity(Path(to_absolute_path(cfg.data.root)))
        key = json.dumps([OmegaConf.to_container(cfg.data, resolve=True), str(device), files], sort_keys=True)
        if key not in self.splits:
            self.splits[key] = load_data(cfg, device, mapped=True).as_inputs()  # many passes: converted once
        self.used.add(key)
        return self.splits[key]

    def keep_used(self) -> None:
        """Keep what the batch since the last call used, for the next batch; drop the rest."""
        self.splits = {key: splits for key, splits in self.splits.items() if key in self.used}
        self.used = set()


# The data of the sweep's batches, in the process that trains them (the launch process, launch_process.py)
SWEEP_DATA = LoadedData()


def checked_constant_epochs(cfg: DictConfig) -> int:
    """constant_epochs(), which builds the trial's optimizer and scheduler on a probe: the classes' own
    checks of its arguments (SGD's momentum=-1) then fail this trial alone, before its batch trains. A
    metric-driven scheduler, which constant_epochs() does not build, is built here."""
    if monitor(cfg.scheduler) is not None:
        build_scheduler(cfg.scheduler, build_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)]))
    return constant_epochs(cfg)


def train_group(
    runs: list[BatchedRun], indices: list[int], settings: BatchSettings, loaded: LoadedData
) -> dict[int, Any]:
    cfg = runs[0].cfg
    share = CpuShare(job_cpus())
    share.register()
    threads = threads_for_this_job(cfg.trainer.num_threads, share)
    torch.set_num_threads(threads)
    device = resolve_device(cfg.trainer.device)
    data = loaded.get(cfg, device)
    outcomes: dict[int, Any] = {}
    ready: list[tuple[int, BatchedRun]] = []
    for index, run in zip(indices, runs, strict=True):
        if (unfit := run.fit_for(len(data.train))) is not None:  # checked as it was prepared, usually
            outcomes[index] = unfit
        else:
            ready.append((index, run))
    if len(ready) == 1:
        log.info("1 trial trains alone: no other trial of the batch has its model, data and batch size")
    if len(ready) > 1 and cfg.trainer.stacking == "never":
        log.info("%d trials train one at a time: trainer.stacking=never", len(ready))
    if len(ready) < 2 or cfg.trainer.stacking == "never":
        outcomes.update({index: run_alone(run) for index, run in ready})
        return outcomes
    ready.sort(key=lambda item: item[1].cfg.trainer.seed)  # a seed's trials side by side: one block
    seeds = list(dict.fromkeys(run.cfg.trainer.seed for _, run in ready))
    initial: dict[int, Initial] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        try:
            model = build_model(cfg.model).to(device)
        except UserInputError as error:  # the group's model (+model.foo=2): each of its trials fails with it
            outcomes.update({index: error for index, _ in ready})
            return outcomes
        initial[seed] = Initial(model, torch.get_rng_state())
    model = initial[seeds[0]].model
    sample, _ = data.train.batch(slice(0, cfg.trainer.batch_size))
    stacked, how = stack_model(model, 2, sample, several_seeds=len(seeds) > 1)
    if stacked is None:
        log.info("%d trials train one at a time: %s", len(ready), how)
        outcomes.update({index: run_alone(run) for index, run in ready})
        return outcomes
    size = fitting_batch(model, sample, settings.max_batch, len(ready))
    for start in range(0, len(ready), size):
        chunk = ready[start : start + size]
        if len(chunk) == 1:
            outcomes[chunk[0][0]] = run_alone(chunk[0][1])
            continue
        spread = Spread.of(len(chunk), settings.processes, device, threads)
        chunk_seeds = len({run.cfg.trainer.seed for _, run in chunk})
        if cfg.trainer.stacking == "auto" and not stacking_is_faster(
            model, how, spread, sample, data.train, chunk_seeds
        ):
            outcomes.update({index: run_alone(run) for index, run in chunk})
            continue

        def train_stacked(part: list[BatchedRun]) -> list[Any]:
            return StackedGroup(initial, how, part, data, device).train()

        trained = train_in_parts([run for _, run in chunk], train_stacked, spread)
        for (index, _), outcome in zip(chunk, trained, strict=True):
            outcomes[index] = outcome
    return outcomes


@dataclass(frozen=True)
class Initial:
    """A seed's start, as a run alone with it starts: the model's initial weights, and the state of torch's
    generator after they were drawn (the run's dropout masks come from there)."""

    model: torch.nn.Module
    rng_state: torch.Tensor


def mask_generator(seed: int, start: Initial, device: torch.device) -> torch.Generator:
    """The generator a run alone with this seed draws its dropout masks from: on a CPU, torch's, where it
    stood after the initial weights were drawn; on a GPU, the device's, as torch.manual_seed(seed) left it
    (the weights are drawn on the CPU)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(start.rng_state)
        return generator
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Spread:
    """How a stacked chunk of trials trains: split into parts (src/trial_processes.py), each in its own
    process with `threads_each` threads at once, or in one part with all the threads."""

    trials: int
    parts: int
    threads_each: int
    why_one: str | None = None  # why one process trains them where processes were asked for (logged)

    @classmethod
    def of(cls, trials: int, processes: int | None, device: torch.device, threads: int) -> "Spread":
        """processes=None: one per thread on Linux (fork is safe with torch there), or one on a GPU,
        silently."""
        chosen = processes is not None
        if processes is None:
            processes = threads if sys.platform == "linux" and device.type == "cpu" else 1
        if processes == 1:
            return cls(trials, 1, threads)
        parts = len(split(range(trials), processes))
        why_one = (
            None if device.type == "cpu" else f"the trials train on {device.type}, which a fork cannot share"
        )
        if why_one is None and parts == 1:
            why_one = f"{trials} trials are too few to split (at least 2 per process)"
        if why_one is not None:
            return cls(
                trials, 1, threads, f"hydra.launcher.processes={processes}: {why_one}" if chosen else None
            )
        return cls(trials, parts, max(1, threads // parts))

    @property
    def largest_part(self) -> int:
        return -(-self.trials // self.parts)

    def __str__(self) -> str:
        threads = counted(self.threads_each, "thread")
        if self.parts == 1:
            return f"in one process ({threads})"
        return f"in {self.parts} processes of up to {self.largest_part} ({threads} each)"


def train_in_parts(
    runs: list[BatchedRun], train_stacked: Callable[[list[BatchedRun]], list[Any]], spread: Spread
) -> list[Any]:
    """train_stacked over the runs, spread as planned (on a CPU, over processes: src/trial_processes.py);
    each run's outcome."""
    if spread.why_one is not None:
        log.info("%d trials train in one process (%s)", len(runs), spread.why_one)
    if spread.parts == 1:
        return train_stacked(runs)
    parts = split(runs, spread.parts)
    log.info(
        "%d trials train in %d processes (%s trials, %s each)",
        len(runs),
        len(parts),
        " + ".join(str(len(part)) for part in parts),
        counted(spread.threads_each, "thread"),
    )
    return [outcome for part in in_processes(parts, train_stacked, spread.threads_each) for outcome in part]


def fitting_batch(model: torch.nn.Module, sample: torch.Tensor, max_batch: int | None, trials: int) -> int:
    """How many trials train together: max_batch, and what fits in MEMORY_SHARE of the available memory
    (per trial: weights, gradients and two optimizer states, and the activations of a training batch)."""
    activations = 0

    def count(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    with torch.no_grad():
        model(sample)
    for hook in hooks:
        hook.remove()
    per_trial = 4 * parameter_bytes(model) + 2 * activations  # activations kept for backward, and grads
    available = available_memory_bytes()
    fits = max(1, int(MEMORY_SHARE * available // per_trial))
    size = min(trials, fits, max_batch or trials)
    log.info(
        "%d trials: about %.1f MB per trial stacked, %.0f MB available: groups of up to %d%s",
        trials,
        per_trial / 2**20,
        available / 2**20,
        size,
        f" (hydra.launcher.max_batch={max_batch})" if max_batch and max_batch < min(trials, fits) else "",
    )
    return size


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def stacking_is_faster(
    model: torch.nn.Module, how: str, spread: Spread, sample: torch.Tensor, train_split: Split, seeds: int = 1
) -> bool:
    """Time a few training steps as the trials would train stacked (the largest part of the spread, on its
    threads: the parts step at once, each in its process; trials of several seeds in blocks) and one
    trial's alone (times the trials, on all the threads); False, with a log line, when stacking would be
    slower. Works on copies and leaves the random generators and the thread count as they were."""
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    _, labels = train_split.batch(slice(0, len(sample)))
    stacked = StackedModel([model] * spread.largest_part, how)
    inputs: Inputs = sample
    stacked_labels = labels
    if seeds > 1:
        sizes = [len(block) for block in split(range(spread.largest_part), seeds, least=1)]
        inputs = [Block(size, sample, torch.Generator()) for size in sizes]
        stacked_labels = labels_per_trial(labels, spread.largest_part)
    optimizers = [
        TrialOptimizer(torch.optim.Adam(stacked.trial_views(k), fused=True))
        for k in range(spread.largest_part)
    ]
    alone = copy.deepcopy(model)
    alone_optimizer = torch.optim.Adam(alone.parameters(), fused=True)

    def alone_step() -> None:
        alone_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(alone(sample), labels).backward()
        step_without_dynamo(alone_optimizer)

    timings = {}
    for name, step, step_threads in (
        ("stacked", lambda: stacked_step(stacked, optimizers, inputs, stacked_labels), spread.threads_each),
        ("alone", alone_step, threads),
    ):
        torch.set_num_threads(step_threads)
        step()  # warm-up (first-step state)
        best = math.inf
        for _ in range(TIMED_STEPS):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    faster = timings["stacked"] < spread.trials * timings["alone"]
    log.info(
        "%d trials %s: a training step of them all takes %.2f ms stacked %s, %.2f ms one trial at a time",
        spread.trials,
        "train stacked" if faster else "train one at a time (stacking is not faster here)",
        1e3 * timings["stacked"],
        spread,
        1e3 * spread.trials * timings["alone"],
    )
    return faster


def stacked_step(
    stacked: StackedModel, optimizers: list[TrialOptimizer | None], inputs: Inputs, labels: torch.Tensor
) -> torch.Tensor:
    """One training step of every trial in the stack on one batch (a None optimizer: that trial's weights
    stay as they are); each trial's loss [K], detached."""
    losses, grads = stacked.loss_and_grads(inputs, labels)
    per_trial = [g.unbind(0) for g in grads]  # each trial's slice of each gradient
    stepping = [k for k, optimizer in enumerate(optimizers) if optimizer is not None]
    step_trials([optimizers[k] for k in stepping], [[g[k] for g in per_trial] for k in stepping])
    return losses


def counted(count: int, noun: str) -> str:
    """'1 epoch', '0 epochs', '5 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def jobs_named(jobs: list[str]) -> str:
    """The sweep's jobs a stacked group trains, as its log lines name them: 'job 3', 'jobs 10-14' (a run of
    consecutive numbers), 'jobs 0, 2, 5'. Groups trained at once (one per process) log their epochs side by
    side, so each line says whose it is."""
    if len(jobs) == 1:
        return f"job {jobs[0]}"
    if all(job.isdigit() for job in jobs):
        numbers = [int(job) for job in jobs]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"jobs {numbers[0]}-{numbers[-1]}"
    return f"jobs {', '.join(jobs)}"


@dataclass
class Trial:
    """One run inside a stacked group: its optimizer and scheduler, callbacks and finishing."""

    run: BatchedRun
    optimizer: TrialOptimizer
    stepping: Stepping
    finishing: Any  # run.finishing_run, entered
    end: RunEnd
    callbacks: list
    outcome: Any = None


class StackedGroup:
    """Trials trained as one stacked model. `in_stack` are the trials in the stack (by their index in
    `trials`), in stack order; `running` those not finished. The stack loses finished trials after each
    epoch (_narrow). `runs`: each seed's side by side (one block of the stack), `initial` has their seeds."""

    def __init__(
        self,
        initial: dict[int, Initial],
        how: str,
        runs: list[BatchedRun],
        data: MnistSplits,
        device: torch.device,
    ) -> None:
        seeds = [run.cfg.trainer.seed for run in runs]
        if len(set(seeds)) != sum(1 for _ in itertools.groupby(seeds)):
            raise ValueError(f"a stacked group's trials must come a seed after the other, not {seeds}")
        self.data, self.cfg = data, runs[0].cfg
        self.model = initial[seeds[0]].model
        self.jobs = jobs_named([run.context.job for run in runs])
        self.stacked = StackedModel([initial[seed].model for seed in seeds], how)
        self.shuffles = {
            seed: torch.Generator().manual_seed(seed) for seed in dict.fromkeys(seeds)
        }  # as alone
        # Dropout masks, as alone: from torch's generator (one seed), or from each seed's own (blocks).
        self.masks: dict[int, torch.Generator] | None = None
        if len(self.shuffles) == 1:
            torch.set_rng_state(initial[seeds[0]].rng_state)
        else:
            self.masks = {seed: mask_generator(seed, initial[seed], device) for seed in self.shuffles}
        self.trials: list[Trial] = []
        self.in_stack = list(range(len(runs)))
        self.running = set(self.in_stack)
        lr_unused_in: list[str] = []  # the jobs whose optimizer.lr their scheduler does not use
        for k, run in enumerate(runs):
            cfg, context = run.cfg, run.context
            optimizer = build_optimizer(cfg.optimizer, self.stacked.trial_views(k))
            stepping = Stepping(build_scheduler(cfg.scheduler, optimizer), cfg.scheduler, optimizer)
            constant = constant_epochs(cfg) if run.constant_epochs is None else run.constant_epochs
            callbacks = epoch_callbacks(cfg, context, prunable_from(cfg, context, constant))
            finishing = finishing_run(cfg, context, data, device, callbacks, run.started)
            end = finishing.__enter__()
            context.log.info(
                "trained stacked with %s (hydra/launcher=batched)", counted(len(runs) - 1, "other trial")
            )
            log_data(data, device, context.log)
            if note := lr_not_used(cfg, context.overrides):
                context.log.warning(note)
                lr_unused_in.append(context.job)
            self.trials.append(Trial(run, TrialOptimizer(optimizer), stepping, finishing, end, callbacks))
        if lr_unused_in:
            log.warning(
                "%s: optimizer.lr is not used, their scheduler sets the rate itself (their logs say how)",
                jobs_named(lr_unused_in),
            )
        epochs = max(r.cfg.trainer.epochs for r in runs)
        seeds_named = f", {counted(len(self.masks), 'seed')}" if self.masks else ""
        log.info(
            "%d trials train stacked (%s%s), %s: %s",
            len(runs),
            how,
            seeds_named,
            counted(epochs, "epoch"),
            self.jobs,
        )

    def train(self) -> list[Any]:
        """Each trial's value for the sweeper, or the exception that ended it."""
        epochs = max(t.run.cfg.trainer.epochs for t in self.trials)
        try:
            with (
                warnings.catch_warnings()
            ):  # schedulers check that optimizer.step() ran; the fused path skips it
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
                for epoch in range(1, epochs + 1):
                    if not self.running:
                        break
                    self._epoch(epoch)
                    self._narrow()
        except BaseException as stop:  # Ctrl-C or a crash of the group: every trial still running ends so
            for position in [p for p in self.in_stack if p in self.running]:
                self._finish(position, stop)
            raise
        return [trial.outcome for trial in self.trials]

    def _epoch(self, epoch: int) -> None:
        active = [self.trials[position] for position in self.in_stack]
        first_lrs = [t.stepping.lr for t in active]
        started = time.perf_counter()
        train_losses, diverged = self._train_epoch(active)
        train_time = time.perf_counter() - started
        val_losses, val_accs = self._evaluate(self.data.val)
        _, test_accs = self._evaluate(self.data.test)
        epoch_time = time.perf_counter() - started
        finished: list[tuple[int, Trial, EpochRecord]] = []  # the trials that trained the epoch through
        for k, (position, trial) in enumerate(zip(self.in_stack, active, strict=True)):
            if k in diverged:
                self._finish(position, TrainingDiverged(diverged[k]))
                continue
            trial.stepping.after_epoch({Column.VAL_LOSS: val_losses[k], Column.VAL_ACC: val_accs[k]})
            record = EpochRecord(
                epoch=epoch,
                lr=first_lrs[k],
                train_loss=train_losses[k],
                val_loss=val_losses[k],
                val_acc=val_accs[k],
                test_acc=test_accs[k],
                train_time_s=train_time / len(active),
                epoch_time_s=epoch_time / len(active),
                lr_last=trial.stepping.last_step_lr,
            )
            finished.append((position, trial, record))
        report_epoch_together([trial.callbacks for _, trial, _ in finished], [r for _, _, r in finished])
        for position, trial, record in finished:
            step_lrs = trial.stepping.take_step_lrs() if trial.stepping.per_step else []
            try:
                for callback in trial.callbacks:
                    callback.on_epoch_end(record, step_lrs)
            except Exception as stop:  # pruned (optuna.TrialPruned), or a callback failed: this trial only
                self._finish(position, stop)
                continue
            if epoch == trial.run.cfg.trainer.epochs:
                self._finish(position, None)
        log.info(
            "epoch %d (%s): %d trials in %.2fs, best val_acc %.2f%%, %d running",
            epoch,
            self.jobs,
            len(active),
            time.perf_counter() - started,
            max(val_accs),
            len(self.running),
        )

    def _train_epoch(self, active: list[Trial]) -> tuple[list[float], dict[int, str]]:
        """One pass over the shuffled training set: each trial's mean loss, and the trials whose loss
        stopped being finite (by stack index: why). A diverged trial stops stepping at once."""
        stacked = self.stacked
        stacked.train(True)
        totals = torch.zeros(len(active), dtype=torch.float64)
        diverged: dict[int, str] = {}
        optimizers: list[TrialOptimizer | None] = [trial.optimizer for trial in active]  # None: diverged
        # Per-step schedules step after each optimizer step; the others' lr is the epoch's (their schedulers
        # step after it), so the lr of their last step is taken once, after the epoch.
        per_step = [k for k, trial in enumerate(active) if trial.stepping.per_step]
        for batch_number, (inputs, labels) in enumerate(self._batches(active), start=1):
            values = stacked_step(stacked, optimizers, inputs, labels)
            for k in per_step:
                if optimizers[k] is not None:
                    active[k].stepping.after_optimizer_step()
            if not bool(torch.isfinite(values).all()):
                for k in torch.nonzero(~torch.isfinite(values)).flatten().tolist():
                    reason = f"training diverged: loss is {values[k].item()} at batch {batch_number}"
                    diverged.setdefault(k, reason)
                    optimizers[k] = None
            totals += values.double() * labels.shape[0]
        for trial in active:
            if not trial.stepping.per_step:
                trial.stepping.after_optimizer_step()
        return (totals / len(self.data.train)).tolist(), diverged

    def _batches(self, active: list[Trial]) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """An epoch's training batches: the images and labels of each seed's shuffle, one batch for all
        trials of the group's seed, or a block per seed of the active trials (labels [N, K])."""
        blocks = [
            (seed, len(list(same)))
            for seed, same in itertools.groupby(t.run.cfg.trainer.seed for t in active)
        ]
        shuffles = [self.data.train.shuffled(self.shuffles[seed]) for seed, _ in blocks]
        batch_size = self.cfg.trainer.batch_size
        for start in range(0, len(self.data.train), batch_size):
            batches = [shuffled.batch(slice(start, start + batch_size)) for shuffled in shuffles]
            if self.masks is None:
                yield batches[0]
                continue
            inputs = [
                Block(trials, images, self.masks[seed])
                for (seed, trials), (images, _) in zip(blocks, batches, strict=True)
            ]
            labels = torch.cat(
                [
                    labels_per_trial(labels, trials)
                    for (_, trials), (_, labels) in zip(blocks, batches, strict=True)
                ],
                dim=1,
            )
            yield inputs, labels

    @torch.no_grad()
    def _evaluate(self, split: Split) -> tuple[list[float], list[float]]:
        """Each trial's (mean loss, accuracy in percent) on a split."""
        self.stacked.train(False)
        trials, batch_size = self.stacked.copies, self.cfg.trainer.eval_batch_size
        losses = torch.zeros(trials, dtype=torch.float64)
        correct = torch.zeros(trials, dtype=torch.long)
        for start in range(0, len(split), batch_size):
            inputs, labels = split.batch(slice(start, start + batch_size))
            logits = self.stacked(inputs)
            losses += trial_losses(logits, labels, reduction="sum").double()
            correct += (logits.argmax(dim=2) == labels).sum(dim=1)
        return (losses / len(split)).tolist(), (100.0 * correct.double() / len(split)).tolist()

    def _finish(self, position: int, stop: BaseException | None) -> None:
        """End one trial as run.train ends a run: weights (unless failed), metrics.json, callbacks, Optuna."""
        trial = self.trials[position]
        weights = copy.deepcopy(self.model)
        weights.load_state_dict(self.stacked.trial_state(self.in_stack.index(position)))
        trial.end.model = weights
        if stop is None:
            try:
                trial.finishing.__exit__(None, None, None)
                trial.outcome = trial.end.summary[trial.run.cfg.optimized_metric]
            except Exception as error:  # its metrics.json not written (a full disk): this trial fails alone
                trial.outcome = error
        else:
            trial.finishing.__exit__(type(stop), stop, stop.__traceback__)
            trial.outcome = stop
        self.running.discard(position)

    def _narrow(self) -> None:
        """Rebuild the stack without the trials that finished; the others go on from new views."""
        kept = [k for k, position in enumerate(self.in_stack) if position in self.running]
        if len(kept) == len(self.in_stack) or not kept:
            return
        self.stacked.keep(kept)
        self.in_stack = [self.in_stack[k] for k in kept]
        for k, position in enumerate(self.in_stack):
            self.trials[position].optimizer.move_to(self.stacked.trial_views(k))
