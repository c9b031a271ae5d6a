"""Each trial of a batch keeps torch's own optimizer, instantiated from its config, on its slice of the
stacked parameters; its scheduler steps that optimizer exactly as in a run alone.

The slices are views of the stack (src/stacked_model.py): an update writes into the stack in place. A step
hands each optimizer its trial's slice of the gradients. For the fused Adam, AdamW and SGD (conf/optimizer/)
after their first step, the step calls torch's fused kernel on the optimizer's own state directly, the same
call torch's step() makes, without its per-call bookkeeping (~140 us a step, which K trials pay K times);
tests/test_batched.py checks it bit for bit against step(). Every other optimizer steps through step().

step_trials steps a whole stack: trials whose kernel and hyperparameters are equal at this step (all of a
StepLR search before its decays, at lr0) share one kernel call over all their tensors. The kernels update each
tensor on its own from the call's scalars and the tensor's own step count, so this is the same arithmetic as
one call per trial, bit for bit (tested).
"""

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from src.dynamo_on_demand import step_without_dynamo


def _fused_kernel(optimizer: torch.optim.Optimizer) -> str | None:
    """Which of torch's fused kernels this optimizer's step() calls, when it calls one we replicate."""
    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) != 1 or not group.get("fused") or torch.is_tensor(group["lr"]):
        return None
    if group.get("maximize") or group.get("differentiable") or group.get("capturable"):
        return None
    if isinstance(optimizer, torch.optim.Adam) and not group["amsgrad"]:  # AdamW is an Adam
        return "adamw" if group.get("decoupled_weight_decay") else "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    return None


class TrialOptimizer:
    """One trial's torch optimizer over its views of the stacked parameters."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.kernel = _fused_kernel(optimizer)
        self.stepped = False
        self.buffers: dict[str, list[torch.Tensor]] = {}  # the state the kernel updates, after the first step

    @property
    def params(self) -> list[torch.Tensor]:
        return self.optimizer.param_groups[0]["params"]

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        step_trials([self], [grads])

    def shared_call(self) -> tuple[Any, ...] | None:
        """What a kernel call for this trial's next step takes besides tensors (trials with equal ones can
        share a call); None when the next step goes through torch's step()."""
        if self.kernel is None or not self.stepped:
            return None
        group = self.optimizer.param_groups[0]
        if self.kernel == "sgd":
            return (
                "sgd",
                group["lr"],
                group["momentum"],
                group["dampening"],
                group["nesterov"],
                group["weight_decay"],
            )
        beta1, beta2 = group["betas"]
        return (self.kernel, group["lr"], beta1, beta2, group["weight_decay"], group["eps"])

    def torch_step(self, grads: Sequence[torch.Tensor]) -> None:
        """A step through torch's step() (the first creates the state as torch does; without importing
        torch._dynamo, src/dynamo_on_demand.py)."""
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        step_without_dynamo(self.optimizer)
        for param in self.params:
            param.grad = None
        self.stepped = True
        if self.kernel is not None:
            self._collect_buffers()

    def _collect_buffers(self) -> None:
        states = [self.optimizer.state[p] for p in self.params]
        names = ("momentum_buffer",) if self.kernel == "sgd" else ("exp_avg", "exp_avg_sq", "step")
        self.buffers = {name: [s[name] for s in states if s.get(name) is not None] for name in names}

    def count_steps_in(self, views: Iterator[torch.Tensor]) -> None:
        """Keep the step count of each parameter in the next of `views` (holding its value already)."""
        for param in self.params:
            self.optimizer.state[param]["step"] = next(views)
        self._collect_buffers()

    def move_to(self, params: list[torch.Tensor]) -> None:
        """Go on with new views of the same values (the stack was rebuilt without some trials)."""
        for old, new in zip(self.params, params, strict=True):
            if old in self.optimizer.state:
                self.optimizer.state[new] = self.optimizer.state.pop(old)
        self.optimizer.param_groups[0]["params"] = list(params)
        if self.stepped and self.kernel is not None:
            self._collect_buffers()


@torch.no_grad()
def step_trials(optimizers: Sequence[TrialOptimizer], grads: Sequence[Sequence[torch.Tensor]]) -> None:
    """One step of each trial (its gradients in grads, in the order of its params); trials with equal
    shared_call() share one kernel call, and the Adam kernels' step counts all count up in one call first
    (as torch's step() counts them up before its kernel)."""
    calls: dict[tuple[Any, ...], list[tuple[TrialOptimizer, Sequence[torch.Tensor]]]] = {}
    for optimizer, trial_grads in zip(optimizers, grads, strict=True):
        call = optimizer.shared_call()
        if call is None:
            optimizer.torch_step(trial_grads)
        else:
            calls.setdefault(call, []).append((optimizer, trial_grads))
    counted = [optimizer for call, members in calls.items() if call[0] != "sgd" for optimizer, _ in members]
    if counted:
        _count_up_steps(counted)
    for call, members in calls.items():
        _fused_call(call, members)


def _count_up_steps(optimizers: list[TrialOptimizer]) -> None:
    """Each Adam step count (one per parameter) of these trials + 1, as torch's step() counts them up, in one
    add: the counts are views of one tensor, made again when the trials counted change. (torch counts each
    tensor on its own, ~4 us apiece: 40 a step for 20 trials of a two-parameter model.)"""
    steps = [step for optimizer in optimizers for step in optimizer.buffers["step"]]
    shared = steps[0]._base
    if shared is None or shared.numel() != len(steps) or any(step._base is not shared for step in steps):
        shared = torch.stack(steps)
        views = iter(shared)
        for optimizer in optimizers:
            optimizer.count_steps_in(views)
    shared.add_(1)


def _joined(members: list[tuple[TrialOptimizer, Sequence[torch.Tensor]]], name: str) -> list[torch.Tensor]:
    return [tensor for optimizer, _ in members for tensor in optimizer.buffers[name]]


def _fused_call(call: tuple[Any, ...], members: list[tuple[TrialOptimizer, Sequence[torch.Tensor]]]) -> None:
    """The kernel call torch's fused step() makes, over the tensors of every member (gradients contiguous:
    the kernels read a gradient in its parameter's layout; Adam's step counts already counted up)."""
    params = [p for optimizer, _ in members for p in optimizer.params]
    grads = [g.contiguous() for _, trial_grads in members for g in trial_grads]
    if call[0] == "sgd":
        _, lr, momentum, dampening, nesterov, weight_decay = call
        torch._fused_sgd_(
            params,
            grads,
            [] if momentum == 0 else _joined(members, "momentum_buffer"),
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr,
            dampening=dampening,
            nesterov=nesterov,
            maximize=False,
            is_first_step=False,
            grad_scale=None,
            found_inf=None,
        )
        return
    kernel, lr, beta1, beta2, weight_decay, eps = call
    (torch._fused_adamw_ if kernel == "adamw" else torch._fused_adam_)(
        params,
        grads,
        _joined(members, "exp_avg"),
        _joined(members, "exp_avg_sq"),
        [],
        _joined(members, "step"),
        amsgrad=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
