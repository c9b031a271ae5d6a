"""What users see in the real clients pointed at a sweep: TensorBoard's HParams dashboard and
optuna-dashboard, both run as servers and read through their own HTTP APIs."""

import sys
from pathlib import Path

import pytest
from helpers.cli import run_cli, tiny_data_overrides
from helpers.servers import free_port, http_json, start_web_server, stop_process
from helpers.sweeps import MEDIAN_PRUNER, PRUNING_SWEEP, optuna_sweep_args

# Real servers, several processes, long trials: the slow tier (make test-all; CI runs it).
pytestmark = pytest.mark.slow


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def project(tiny_mnist, tmp_path_factory) -> Path:
    """A grid sweep over gamma with the median pruner (completed and pruned trials, TensorBoard on), and a
    single run that diverges (failed)."""
    root = tmp_path_factory.mktemp("clients")
    pruning = [arg for arg in PRUNING_SWEEP if arg != "logger=none"]
    sweep = run_cli("src.train", *optuna_sweep_args(tiny_mnist, root, "sweep", *pruning, *MEDIAN_PRUNER))
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    failed = run_cli(
        "src.train",
        f"hydra.run.dir={root / 'failed'}",
        *tiny_data_overrides(tiny_mnist),
        "model=mlp",
        "optimizer=sgd",
        "optimizer.lr=1000",
        "trainer.epochs=1",
    )
    assert failed.returncode != 0
    return root


@pytest.fixture
def tensorboard(tmp_path):
    servers = []

    def serve(logdir: Path) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
        servers.append(
            start_web_server([*command, "--port", str(port)], f"{url}/data/runs", tmp_path / "tb.log")
        )
        return url

    yield serve
    for server in servers:
        stop_process(server)


def hparams_experiment(url: str) -> dict:
    return http_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})


def session_groups(url: str) -> list[dict]:
    request = {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 100}
    return http_json(f"{url}/data/plugin/hparams/session_groups", request)["sessionGroups"]


def test_tensorboard_hparams_puts_the_swept_parameter_first_and_shows_each_run_status(project, tensorboard):
    url = tensorboard(project / "sweep")
    infos = hparams_experiment(url)["hparamInfos"]
    assert [i["name"] for i in infos if i["differs"]] == ["scheduler.gamma"]  # the grid's one swept key
    assert infos[0]["name"] == "scheduler.gamma"  # first, so the dashboard shows it ticked
    metrics = {m["name"]["tag"] for m in hparams_experiment(url)["metricInfos"]}
    assert {"accuracy/val", "accuracy/test", "loss/val"} <= metrics
    assert not [m for m in metrics if m.startswith("hparam/")]
    groups = session_groups(url)
    assert len(groups) == 6
    statuses = {}
    for group in groups:
        job = group["name"].split(":")[0]
        metrics_json = (project / "sweep" / job / "metrics.json").read_text()
        statuses[job] = (group["sessions"][0]["status"], '"status": "pruned"' in metrics_json)
        assert "gamma=" in group["name"] and "data" not in group["name"]  # a readable name
    assert {status for status, pruned in statuses.values() if pruned} == {"STATUS_UNKNOWN"}
    assert {status for status, pruned in statuses.values() if not pruned} == {"STATUS_SUCCESS"}
    assert any(pruned for _, pruned in statuses.values())
    tags = http_json(f"{url}/data/plugin/scalars/tags")
    assert not [tag for run in tags.values() for tag in run if tag.startswith("hparam/")]


def test_tensorboard_shows_a_failed_run_as_a_failure(project, tensorboard):
    url = tensorboard(project)
    failed = [g for g in session_groups(url) if g["name"].startswith("run:")]
    assert len(failed) == 1 and failed[0]["sessions"][0]["status"] == "STATUS_FAILURE"
    assert "lr=1000" in failed[0]["name"]


def test_optuna_dashboard_names_the_objective_and_shows_readable_consistent_attributes(project, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        "optuna-dashboard",
        f"sqlite:///{project / 'optuna.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = start_web_server(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        f"{url}/api/studies",
        tmp_path / "dash.log",
    )
    try:
        (summary,) = http_json(f"{url}/api/studies")["study_summaries"]
        study = http_json(f"{url}/api/studies/{summary['study_id']}?after=0")
    finally:
        stop_process(server)
    assert study["objective_names"] == ["val_acc"]  # not "Objective 0"
    settings = {a["key"]: a["value"] for a in summary["user_attrs"]}
    assert set(settings) == {"sweep.id", "sweep.fixed", "sweep.searched"}
    assert all(len(value) < 300 and "\\" not in value and "{" not in value for value in settings.values())
    assert "scheduler.step_size=1" in settings["sweep.fixed"]
    sortable = {a["key"]: a["sortable"] for a in study["union_user_attrs"]}
    assert sortable["trainer.epochs"] and sortable["epochs_planned"]  # both numbers, as they are
    assert all(any(a["key"] == "run_dir" for a in t["user_attrs"]) for t in study["trials"])
