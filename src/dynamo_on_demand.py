"""torch's optimizers without importing torch._dynamo, which nothing needs until something compiles: the
batched launcher's launch process, which trains with them, is ready 0.5 to 0.8 s sooner (0.8 s of imports).

torch imports torch._dynamo in two places an optimizer passes through, only to keep torch.compile from tracing
the optimizer's bookkeeping; nothing compiles before torch._dynamo is imported, so until then both change
nothing:
- Four methods of torch.optim.Optimizer (add_param_group, which every optimizer's constructor calls,
  zero_grad, state_dict and load_state_dict) are wrapped in torch._disable_dynamo, which imports
  torch._dynamo at their first call to mark them. defer_dynamo_import() has them call straight through until
  torch._dynamo is loaded (by torch.compile or anything else), and take torch's mark from then on. It fills
  the cache torch._disable_dynamo keeps on the wrapped method (its `__dynamo_disable` attribute); a torch
  without that cache ignores it and imports torch._dynamo as before.
- step() of every optimizer imports it to put graph breaks around the update. step_without_dynamo() runs the
  update as step() does outside torch.compile, without them (and without the range torch's profiler would
  record for the step).
The optimizers stay torch's own classes and their updates torch's own code (tests/test_dynamo_on_demand.py
checks the state and weights bit for bit against step()). A single run imports torch._dynamo at its start
anyway (src/train.py), and its loop calls step().
"""

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import optimizer as optimizer_module

WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
CACHE = "__dynamo_disable"  # where torch._disable_dynamo keeps the disabled function (torch/_compile.py)
DYNAMO = "torch._dynamo"


def marked_once_dynamo_is_loaded(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` called as is while torch._dynamo is not loaded; once it is, as torch._disable_dynamo would
    (torch._dynamo.disable), and from then on always so."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if DYNAMO not in sys.modules:
            return method(*args, **kwargs)
        disabled = sys.modules[DYNAMO].disable(method, True, wrapping=False)
        setattr(method, CACHE, disabled)
        return disabled(*args, **kwargs)

    return call


def defer_dynamo_import() -> None:
    """From now on, in this process, torch's optimizers import torch._dynamo only if it is loaded anyway."""
    if DYNAMO in sys.modules:
        return
    for name in WRAPPED_METHODS:
        method = getattr(torch.optim.Optimizer, name, None)
        wrapped = getattr(method, "__wrapped__", None)
        if wrapped is not None and getattr(wrapped, CACHE, None) is None:
            setattr(wrapped, CACHE, marked_once_dynamo_is_loaded(wrapped))


def has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step() would run hooks (the optimizer's or every optimizer's): True when unknown."""
    hook_tables = (
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(optimizer_module, "_global_optimizer_pre_hooks", None),
        getattr(optimizer_module, "_global_optimizer_post_hooks", None),
    )
    return any(table is None or len(table) > 0 for table in hook_tables)


def step_without_dynamo(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.step(), without importing torch._dynamo while it is not loaded: the update itself (its
    class's step, unwrapped) with gradients off, as step() runs it outside torch.compile; then what a
    learning rate scheduler's wrapper of step() records (that the optimizer stepped). An optimizer with step
    hooks, or a differentiable one, steps through step()."""
    if DYNAMO in sys.modules or optimizer.defaults.get("differentiable") or has_step_hooks(optimizer):
        optimizer.step()
        return
    update = inspect.unwrap(type(optimizer).step)
    with torch.no_grad():
        update(optimizer)
    optimizer._opt_called = True  # type: ignore[attr-defined]  # as torch.optim.lr_scheduler's wrapper
