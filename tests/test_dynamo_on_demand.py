"""src/dynamo_on_demand.py: torch's optimizers without importing torch._dynamo until something does.

The checks that need torch._dynamo not yet imported run in a fresh interpreter (this one may have imported
it for other tests)."""

import json
import subprocess
import sys

from helpers.cli import REPO, cli_env, run_python, tiny_data_overrides

# Each optimizer stepped by step_without_dynamo with a scheduler, then the same by torch's step(); the
# weights and the optimizer's state after each, and what happened on the way.
SAME_STEPS = """
import json, sys, warnings
import torch
from src.dynamo_on_demand import defer_dynamo_import, step_without_dynamo

defer_dynamo_import()
SETTINGS = [
    (torch.optim.Adam, dict(lr=0.01, fused=True)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, fused=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, fused=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (torch.optim.RMSprop, dict(lr=0.01)),
]


def train(make, setting, step):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    optimizer = make(params, **setting)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        (params[0].sum(0) * params[1]).square().sum().backward()
        step(optimizer)
        scheduler.step()
    state = optimizer.state_dict()
    return [p.detach().tolist() for p in params], [
        {k: v.tolist() if torch.is_tensor(v) else v for k, v in s.items()} for s in state["state"].values()
    ]


with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    deferred = [train(make, setting, step_without_dynamo) for make, setting in SETTINGS]
dynamo_before_step = "torch._dynamo" in sys.modules
stepped = [train(make, setting, lambda o: o.step()) for make, setting in SETTINGS]
print(json.dumps({
    "dynamo imported without step()": dynamo_before_step,
    "dynamo imported by step()": "torch._dynamo" in sys.modules,
    "warnings": [str(w.message) for w in seen],
    "same": [a == b for a, b in zip(deferred, stepped)],
}))
"""


def test_an_optimizer_stepped_without_dynamo_matches_torchs_step_bit_for_bit_and_imports_nothing(tmp_path):
    result = run_python(SAME_STEPS, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["dynamo imported without step()"] is False  # constructor, zero_grad, step, state_dict
    assert seen["dynamo imported by step()"] is True  # what it saved
    assert seen["warnings"] == []  # the scheduler saw the optimizer step first
    assert seen["same"] == [True] * 5


MARK_TAKEN = """
import json
import torch
from src.dynamo_on_demand import CACHE, defer_dynamo_import

defer_dynamo_import()
optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
zero_grad = torch.optim.Optimizer.zero_grad.__wrapped__
before = getattr(zero_grad, CACHE).__qualname__
import torch._dynamo
optimizer.zero_grad()
after = getattr(zero_grad, CACHE)
print(json.dumps({"before": before, "after is torch's": after.__module__.startswith("torch._dynamo")}))
"""


def test_once_dynamo_is_imported_the_optimizers_methods_take_torchs_mark(tmp_path):
    result = run_python(MARK_TAKEN, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["before"] == "marked_once_dynamo_is_loaded.<locals>.call"
    assert seen["after is torch's"] is True


HOOKED = """
import json
import torch
from src.dynamo_on_demand import step_without_dynamo

param = torch.zeros(2, requires_grad=True)
optimizer = torch.optim.SGD([param], lr=0.5)
calls = []
optimizer.register_step_post_hook(lambda *_: calls.append("post"))
param.grad = torch.ones(2)
step_without_dynamo(optimizer)
print(json.dumps({"calls": calls, "param": param.tolist()}))
"""


def test_an_optimizer_with_a_step_hook_steps_through_step_and_runs_its_hook(tmp_path):
    result = run_python(HOOKED, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"calls": ["post"], "param": [-0.5, -0.5]}


def test_a_stacked_sweeps_processes_never_import_dynamo(tiny_mnist, tmp_path):
    """The launch process and its child (processes=2) train the stacked grid; -X importtime (its variable,
    inherited by the forked processes) lists every import of every process of the command."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "--multirun",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *tiny_data_overrides(tiny_mnist),
            "hydra/launcher=batched",
            "hydra.launcher.processes=2",
            "trainer.stacking=always",
            "trainer.epochs=1",
            "optimizer.lr=0.001,0.002,0.003,0.004",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**cli_env(), "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    assert {"torch", "src.trial_optimizers"} <= imported  # the launch process's imports are listed
    assert "4 trials train in 2 processes" in result.stdout + result.stderr
    assert not any(module.startswith("torch._dynamo") for module in imported)
    statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").glob("*/metrics.json")]
    assert statuses == ["completed"] * 4
