"""Each trial of a batch keeps torch's own optimizer, instantiated from its config, on its slice of the
stacked parameters; its scheduler steps that optimizer exactly as in a run alone.

The slices are views of the stack (src/stacked_model.py): an update writes into the stack in place. A step
hands each optimizer its trial's slice of the gradients. For the fused Adam, AdamW and SGD (conf/optimizer/)
after their first step, the step calls torch's fused kernel on the optimizer's own state directly, the same
call torch's step() makes, without its per-call bookkeeping (~140 us a step, which K trials pay K times);
tests/test_batched.py checks it bit for bit against step(). Every other optimizer steps through step().
"""

from collections.abc import Sequence

import torch


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

    @property
    def params(self) -> list[torch.Tensor]:
        return self.optimizer.param_groups[0]["params"]

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        if self.kernel is None or not self.stepped:  # the first step creates the state as torch does
            for param, grad in zip(self.params, grads, strict=True):
                param.grad = grad
            self.optimizer.step()
            for param in self.params:
                param.grad = None
            self.stepped = True
            return
        self._fused_step([g.contiguous() for g in grads])  # the kernels read a gradient in its param's layout

    @torch.no_grad()
    def _fused_step(self, grads: list[torch.Tensor]) -> None:
        group, params = self.optimizer.param_groups[0], self.params
        states = [self.optimizer.state[p] for p in params]
        if self.kernel == "sgd":
            momentum = group["momentum"]
            torch._fused_sgd_(
                params,
                grads,
                [] if momentum == 0 else [s["momentum_buffer"] for s in states],
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=False,
                is_first_step=False,
                grad_scale=None,
                found_inf=None,
            )
            return
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if self.kernel == "adamw" else torch._fused_adam_
        kernel(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def move_to(self, params: list[torch.Tensor]) -> None:
        """Go on with new views of the same values (the stack was rebuilt without some trials)."""
        for old, new in zip(self.params, params, strict=True):
            if old in self.optimizer.state:
                self.optimizer.state[new] = self.optimizer.state.pop(old)
        self.optimizer.param_groups[0]["params"] = list(params)
