"""Hydra's run_job (hydra.core.utils, 1.4) for the jobs of a batch, with one copy of the job's config where
Hydra's makes four.

Hydra's sets its HydraConfig twice (a copy of the 200-line hydra node each time), copies the whole config
for the task and the hydra node once more for the JobReturn: about 30 ms of a job's 60, for a job whose task
only defers its training. Here HydraConfig reads the job's own config while the output directory is worked
out, is set once after, and that one copy of the hydra node is also the JobReturn's (nothing changes it
after: the next job sets a new one); the task's config and that copy are pickled copies, a third of a deep
copy's time, with the same content and flags. Everything else follows Hydra's, step by step: the output
directory, env_set, chdir, the job's logging, .hydra/, the callbacks, and how a failing task or a control-flow
exception reaches the JobReturn and the callbacks (tests/test_job_run.py runs jobs through both).
"""

import contextlib
import os
import pickle
from pathlib import Path

from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _log_job_error_to_file,
    _save_config,
    _serialize_exception_chain,
    _serialize_exception_group,
    _serialize_traceback,
    _set_job_return_handoff,
    configure_log,
    env_override,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def copied(config: DictConfig) -> DictConfig:
    """A copy of a root config: what copy.deepcopy gives, in a third of its time."""
    return pickle.loads(pickle.dumps(config))


def task_part(config: DictConfig) -> DictConfig:
    """copied(config) without its hydra node, as run_job gives the task: only the rest is pickled."""
    content = config.__dict__["_content"]
    config.__dict__["_content"] = {key: node for key, node in content.items() if key != "hydra"}
    try:
        return copied(config)
    finally:
        config.__dict__["_content"] = content


def hydra_part(config: DictConfig) -> DictConfig:
    """OmegaConf.masked_copy(config, "hydra"), the config HydraConfig.set_config keeps, with its hydra node
    copied by pickle (a third of the deep copy's time; the node alone, not the config it is in)."""
    node = config._get_node("hydra")
    parent = node._get_parent()
    node._set_parent(None)
    try:
        node_copy = pickle.loads(pickle.dumps(node))
    finally:
        node._set_parent(parent)
    masked = DictConfig(content={}, flags={"no_deepcopy_set_nodes": True})  # set as it is: a copy already
    masked["hydra"] = node_copy
    masked._set_flag("no_deepcopy_set_nodes", None)
    return masked


def set_hydra_config(config: DictConfig) -> None:
    """HydraConfig.instance().set_config(config), step by step, with hydra_part for its masked copy."""
    OmegaConf.set_readonly(config.hydra, True)
    hydra_node_type = OmegaConf.get_type(config, "hydra")
    assert hydra_node_type is not None and issubclass(hydra_node_type, HydraConf)
    instance = HydraConfig.instance()
    instance.cfg = hydra_part(config)  # type: ignore[assignment]
    instance.cfg.hydra._set_parent(config)  # type: ignore[union-attr]  (interpolations reach the task's)


def output_dir_of(config: DictConfig) -> str:
    """hydra.sweep.dir/hydra.sweep.subdir as Hydra resolves them, HydraConfig reading this job's config."""
    HydraConfig.instance().cfg = config  # for ${hydra:...} in them; set properly once the dir is known
    return os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))


def run_job(task_function: TaskFunction, config: DictConfig, hydra_context: HydraContext) -> JobReturn:
    # Imported lazily, as Hydra does: execution_policy's resolver imports core.utils.
    from hydra._internal.execution_policy import execution_whitelist

    with execution_whitelist(hydra_context.execution_whitelist, reset=True):
        return _run_job(task_function, config, hydra_context)


def _run_job(task_function: TaskFunction, config: DictConfig, hydra_context: HydraContext) -> JobReturn:
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    OmegaConf.set_readonly(config.hydra, True)
    _chdir = None
    try:
        output_dir = output_dir_of(config)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        set_hydra_config(config)

        ret = JobReturn()
        task_cfg = task_part(config)
        ret.cfg = task_cfg
        hydra_cfg = HydraConfig.instance().cfg
        assert isinstance(hydra_cfg, DictConfig)
        env_set = hydra_cfg.hydra.job.env_set
        with read_write(env_set):
            OmegaConf.resolve(env_set)
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(output_dir).mkdir(parents=True, exist_ok=True)

        _chdir = hydra_cfg.hydra.job.chdir
        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()

        configure_log(
            config.hydra.job_logging,
            config.hydra.verbose,
            execution_whitelist=hydra_context.execution_whitelist,
        )
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)

        ret.task_name = JobRuntime.instance().get("name")
        job_started = False
        control_flow_exception_active = False
        handoff_error: BaseException | None = None
        try:
            try:
                with env_override(hydra_cfg.hydra.job.env_set):
                    # Set before dispatch, so a BaseException raised by a start hook still gets the end hook.
                    job_started = True
                    callbacks.on_job_start(config=config, task_function=task_function)
                    try:
                        ret.return_value = task_function(task_cfg)
                        ret.status = JobStatus.COMPLETED
                    except Exception as e:
                        ret.return_value = e
                        ret.status = JobStatus.FAILED
                        try:
                            ret._remote_traceback = _serialize_traceback(e.__traceback__)
                            ret._remote_exception_chain = _serialize_exception_chain(e)
                            ret._remote_exception_group = _serialize_exception_group(e)
                        except Exception:
                            pass
                        with contextlib.suppress(Exception):
                            _log_job_error_to_file()
            except BaseException as e:
                # Control-flow exceptions still propagate, after the end hooks have seen the failed JobReturn.
                control_flow_exception_active = True
                ret.return_value = e
                ret.status = JobStatus.FAILED
                handoff_error = e
                raise
            finally:
                try:
                    _flush_loggers()
                except BaseException as e:
                    if not control_flow_exception_active and not (
                        ret.status is JobStatus.FAILED
                        and isinstance(ret._return_value, Exception)
                        and isinstance(e, Exception)
                    ):
                        if ret.status is not JobStatus.FAILED:
                            ret.return_value = e
                            ret.status = JobStatus.FAILED
                        handoff_error = e
                        raise
                finally:
                    if job_started:
                        try:
                            callbacks.on_job_end(config=config, job_return=ret)
                        except BaseException:
                            # A callback's failure replaces any earlier exception and its JobReturn handoff.
                            handoff_error = None
                            raise
        except BaseException as e:
            # The private handoff is attached only after the job-end observers have seen ret.
            if e is handoff_error:
                _set_job_return_handoff(e, ret)
            raise
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)
