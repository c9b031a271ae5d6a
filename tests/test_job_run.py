"""The batched launcher's run_job (hydra_plugins/batched_launcher/job_run.py) against Hydra's own: the
same JobReturn, files, callbacks, environment and Hydra config, for a task that returns, fails or is
interrupted."""

import os
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, _take_job_return_handoff, setup_globals
from hydra.core.utils import run_job as hydras_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict, read_write

from hydra_plugins.batched_launcher.job_run import run_job as batched_run_job

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["hparams_search=steplr_optuna", "hydra/launcher=batched", "hydra.sweep.subdir=job_${hydra:job.num}"]
JOB = [
    "hparams_search=steplr_optuna",
    "scheduler.step_size=3",
    "scheduler.gamma=0.07",
    "++hydra.job.env_set.JOB_RUN_TEST=seven",
]


class Recorder:
    """Hydra's Callbacks, as run_job calls them: what each job-start and job-end hook saw."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_job_start(self, config, task_function) -> None:
        self.calls.append(("start", config.hydra.job.num))

    def on_job_end(self, config, job_return) -> None:
        self.calls.append(("end", config.hydra.job.num, job_return.status))


def task_that(outcome: str):
    def task(cfg):
        hydra = HydraConfig.get()
        seen = (
            hydra.job.num,
            Path(hydra.runtime.output_dir).name,
            os.environ["JOB_RUN_TEST"],
            cfg.scheduler.gamma,
            "hydra" in cfg,
        )
        if outcome == "fails":
            raise ValueError(f"bad {seen}")
        if outcome == "interrupted":
            raise KeyboardInterrupt
        return seen

    return task


def run_with(runner, outcome: str, sweep_dir: Path, chdir: bool):
    """The JobReturn (or the interrupting exception), the callbacks' calls and the .hydra/ files."""
    setup_globals()
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration(
        "train",
        overrides=[*SWEEP, f"hydra.sweep.dir={sweep_dir}", f"hydra.job.chdir={chdir}"],
        run_mode=RunMode.MULTIRUN,
    )
    config = loader.load_sweep_config(master, JOB)
    with open_dict(config):
        config.hydra.job.id, config.hydra.job.num = "4", 4
    recorder = Recorder()
    context = HydraContext(config_loader=loader, callbacks=recorder)
    before = HydraConfig.instance().cfg
    cwd = os.getcwd()
    if runner is hydras_run_job:
        call = lambda: runner(task_that(outcome), config, "hydra.sweep.dir", "hydra.sweep.subdir", context)  # noqa: E731
    else:
        call = lambda: runner(task_that(outcome), config, context)  # noqa: E731
    try:
        result = call()
    except KeyboardInterrupt as interrupt:
        result = interrupt
    assert HydraConfig.instance().cfg is before and os.getcwd() == cwd and "JOB_RUN_TEST" not in os.environ
    files = {
        p.name: p.read_text().replace(str(sweep_dir), "<dir>") for p in (sweep_dir / "job_4/.hydra").iterdir()
    }
    return result, recorder.calls, files


def described(job, sweep_dir: Path) -> dict:
    return {
        "status": job.status,
        "value": repr(job._return_value).replace(str(sweep_dir), "<dir>"),
        "cfg": OmegaConf.to_yaml(job.cfg),
        "hydra_cfg": OmegaConf.to_yaml(job.hydra_cfg).replace(str(sweep_dir), "<dir>"),
        "overrides": job.overrides,
        "working_dir": job.working_dir.replace(str(sweep_dir), "<dir>"),
        "task_name": job.task_name,
        "traceback": [name for _, name, _ in job._remote_traceback or []],
    }


@pytest.mark.parametrize("chdir", [False, True])
@pytest.mark.parametrize("outcome", ["returns", "fails", "interrupted"])
def test_a_batched_job_runs_as_hydras_run_job_runs_it(outcome, chdir, tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        ours, our_calls, our_files = run_with(batched_run_job, outcome, tmp_path / "ours", chdir)
        hydras, hydra_calls, hydra_files = run_with(hydras_run_job, outcome, tmp_path / "hydras", chdir)
    assert our_calls == hydra_calls
    assert our_files == hydra_files and set(our_files) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    if outcome == "interrupted":
        assert isinstance(ours, KeyboardInterrupt) and isinstance(hydras, KeyboardInterrupt)
        ours, hydras = _take_job_return_handoff(ours), _take_job_return_handoff(hydras)
    assert described(ours, tmp_path / "ours") == described(hydras, tmp_path / "hydras")
    expected_status = JobStatus.COMPLETED if outcome == "returns" else JobStatus.FAILED
    assert ours.status is expected_status and our_calls == [("start", 4), ("end", 4, expected_status)]
    if outcome == "returns":
        assert ours.return_value == (4, "job_4", "seven", 0.07, False)


def metadata_of_every_node(node, path: str = "") -> dict:
    """Each node's metadata (type, flags, key...) by where it is."""
    found = {path: node._metadata}
    content = node.__dict__.get("_content")
    if isinstance(content, dict):
        for key in content:
            found.update(metadata_of_every_node(node._get_node(key), f"{path}.{key}"))
    elif isinstance(content, list):
        for index in range(len(content)):
            found.update(metadata_of_every_node(node._get_node(index), f"{path}[{index}]"))
    return found


def test_the_hydra_config_a_batched_job_sets_is_the_masked_copy_hydra_makes(tmp_path):
    """HydraConfig.set_config keeps OmegaConf.masked_copy(config, "hydra"); the batched run_job keeps a
    pickled copy of the hydra node instead (hydra_part): the same values, types and flags at every node, the
    same read-only hydra node, and a copy, not the job's own nodes. The task's config (task_part) is a copy
    without the hydra node, as Hydra's run_job makes it, and the job's config keeps its own, in its place."""
    import copy

    from hydra_plugins.batched_launcher.job_run import hydra_part, task_part

    with initialize_config_dir(config_dir=str(REPO / "conf")):
        setup_globals()
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "train", overrides=[*SWEEP, f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN
        )
        config = loader.load_sweep_config(master, JOB)
    OmegaConf.set_readonly(config.hydra, True)
    hydras, ours = OmegaConf.masked_copy(config, "hydra"), hydra_part(config)
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras) and list(ours) == ["hydra"]
    assert metadata_of_every_node(ours) == metadata_of_every_node(hydras)
    assert OmegaConf.is_readonly(ours.hydra) and ours.hydra._get_parent() is ours
    assert config.hydra._get_parent() is config  # the job's own node stays where it was
    keys = list(config)
    task, hydras_task = task_part(config), copy.deepcopy(config)
    with read_write(hydras_task), open_dict(hydras_task):
        del hydras_task["hydra"]
    assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml(hydras_task) and "hydra" not in task
    assert metadata_of_every_node(task) == metadata_of_every_node(hydras_task)
    assert list(config) == keys and config.hydra._get_parent() is config
    with open_dict(config), read_write(config.hydra):
        config.hydra.job.name = "changed"
        config.trainer.epochs = 99
    assert ours.hydra.job.name == hydras.hydra.job.name != "changed" and task.trainer.epochs != 99
