"""hydra_plugins/batched_launcher/collector.py: imports with the garbage collector paused, then frozen.

Each case runs in a fresh interpreter: freezing is for the rest of a process's life."""

import json
import sys

import pytest
from helpers.cli import run_python

from hydra_plugins.batched_launcher.deferral import BatchSettings, Deferred
from hydra_plugins.batched_launcher.launch_process import LaunchProcess

PROBE = """
import gc, json, sys
from hydra_plugins.batched_launcher.collector import imports_without_collector
{before}
collections_before = sum(s["collections"] for s in gc.get_stats())
with imports_without_collector():
    running_inside = gc.isenabled()
    {body}
    kept_alive = [[object()] for _ in range(3000)]  # would trigger collections if it ran
print(json.dumps({{
    "running inside": running_inside,
    "collections inside": sum(s["collections"] for s in gc.get_stats()) - collections_before,
    "running after": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}}))
"""


def probe(tmp_path, body: str, before: str = "") -> dict:
    result = run_python(PROBE.format(before=before, body=body), tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_import_runs_with_the_collector_paused_and_what_it_made_is_frozen(tmp_path):
    (tmp_path / "many_objects.py").write_text("table = [[n] for n in range(20000)]\n")
    seen = probe(tmp_path, "import many_objects")
    assert seen["running inside"] is False and seen["collections inside"] == 0
    assert seen["running after"] is True
    assert seen["frozen"] > 20000  # the module's objects, out of every later collection's way


def test_without_an_import_nothing_is_frozen(tmp_path):
    seen = probe(tmp_path, "import json")  # imported already: nothing new
    assert seen["running inside"] is False and seen["running after"] is True
    assert seen["frozen"] == 0


def test_a_collector_that_was_off_stays_off(tmp_path):
    (tmp_path / "a_module.py").write_text("")
    seen = probe(tmp_path, "import a_module", before="gc.disable()")
    assert seen["running after"] is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launch process is forked")
def test_the_launch_process_preloads_with_the_collector_paused_then_collects_as_usual(tmp_path, monkeypatch):
    (tmp_path / "records_the_collector.py").write_text(
        "import gc\nrunning_while_imported = gc.isenabled()\ntable = [[n] for n in range(20000)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def work(collected, settings):
        import gc

        preloaded = sys.modules["records_the_collector"]
        return [(preloaded.running_while_imported, gc.isenabled(), gc.get_freeze_count())]

    process = LaunchProcess(work, ["records_the_collector"])
    try:
        [(running_while_imported, running_after, frozen)] = process.run([Deferred("a")], BatchSettings())
    finally:
        process.stop()
    assert running_while_imported is False
    assert running_after is True
    assert frozen > 20000


TENSORBOARD_LOGGER = """
import gc, json, logging, sys, tempfile
from pathlib import Path
from src.epoch_callbacks import RunContext, TensorBoardEpochs
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
context = RunContext(Path(tempfile.mkdtemp()), "0", ["optimizer.lr=0.1"], None, logging.getLogger("run"))
TensorBoardEpochs(context, {"lr": 0.1})
print(json.dumps({"collections": collections, "imported": "src.tensorboard_log" in sys.modules,
                  "running": gc.isenabled()}))
"""


def test_the_tensorboard_logger_imports_tensorboard_with_the_collector_paused(tmp_path):
    """The default logger imports TensorBoard as the first run's logger is made (in a batched sweep, once the
    batch is whole): with the collector running, it walked torch's objects 20-odd times meanwhile."""
    result = run_python(TENSORBOARD_LOGGER, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {"collections": [], "imported": True, "running": True}
