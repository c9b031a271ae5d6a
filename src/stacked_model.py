"""K copies of one model as one computation: the trials of a batch, each with its own weights.

Two ways, both checked against the model's own forward before use (stack_model):
- layers: a model whose forward is its layers in order (Linear, Conv2d, ReLU, MaxPool2d, Dropout,
  Flatten; our SimpleNet, MLP and CNN) runs as wide layers. The first layer sees the same images for
  every trial, so it is one matmul (or convolution) with K times the outputs, then grouped per trial.
- vmap: any other model through torch.func (functional_call under vmap), slower for the first layer.
Dropout draws one mask of the shape a run alone draws, from the same generator, for all trials
(vmap's randomness="same"): each trial gets exactly the masks its run alone would get.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

CHAIN_LAYERS = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Flatten)


class StackedModel:
    """Stacked parameters ([K, ...] leaf tensors, by the model's parameter names) and a forward that maps
    a batch of images to logits [K, N, classes]."""

    def __init__(self, model: nn.Module, copies: int, how: str) -> None:
        self.template = copy.deepcopy(model)
        stacked, _ = stack_module_state([model] * copies)
        self.params = {name: value.detach().clone().requires_grad_() for name, value in stacked.items()}
        self.how = how
        self.training = True
        if how == "layers":
            self.layers = [m for m in model.modules() if not list(m.children())]
            names = {id(m): name for name, m in model.named_modules()}
            self.layer_names = [names[id(m)] for m in self.layers]
        else:
            meta = copy.deepcopy(model).to("meta")
            self.vmapped = vmap(
                lambda p, x: functional_call(meta, p, (x,)), in_dims=(0, None), randomness="same"
            )
            self.meta = meta

    @property
    def copies(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train(self, training: bool = True) -> None:
        self.training = training
        if self.how == "vmap":
            self.meta.train(training)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.how == "vmap":
            return self.vmapped(self.params, images)
        return wide_forward(self.layers, self.layer_names, self.params, images, self.training)

    def keep(self, trials: list[int]) -> None:
        """Go on with these trials only (indices into the current stack)."""
        index = torch.tensor(trials, dtype=torch.long)
        self.params = {
            name: value.detach()[index].clone().requires_grad_() for name, value in self.params.items()
        }

    def trial_views(self, index: int) -> list[torch.Tensor]:
        """One trial's parameters as views into the stack (leaf tensors an optimizer can update in place)."""
        return [value.detach()[index] for value in self.params.values()]

    def trial_state(self, index: int) -> dict[str, torch.Tensor]:
        """One trial's weights as its model's state_dict."""
        state = self.template.state_dict()
        return {**state, **{name: value[index].detach().clone() for name, value in self.params.items()}}


def wide_forward(
    layers: list[nn.Module],
    names: list[str],
    params: dict[str, torch.Tensor],
    images: torch.Tensor,
    training: bool,
) -> torch.Tensor:
    """The chain of layers for K trials at once. Activations are [N, K, features...] once they differ per
    trial; before the first layer they are the images, the same for all."""
    n = images.shape[0]
    first = layers[0]
    h = (
        images.reshape(n, -1)
        if isinstance(first, nn.Linear)
        else images.reshape(n, first.in_channels, *images.shape[-2:])
    )
    k = next(iter(params.values())).shape[0]
    per_trial = False
    for layer, name in zip(layers, names, strict=True):
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            if per_trial:
                h = torch.bmm(h.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)
            else:
                h = (h @ weight.reshape(-1, weight.shape[-1]).T).view(n, k, -1)
            h = h + bias if bias is not None else h
        elif isinstance(layer, nn.Conv2d):
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            flat = h.reshape(n, -1, *h.shape[-2:])
            h = F.conv2d(
                flat,
                weight.reshape(-1, *weight.shape[2:]),
                bias.reshape(-1) if bias is not None else None,
                layer.stride,
                layer.padding,
                layer.dilation,
                groups=k if per_trial else 1,
            )
            h = h.view(n, k, -1, *h.shape[-2:])
        elif isinstance(layer, nn.MaxPool2d):
            pooled = F.max_pool2d(
                h.reshape(n, -1, *h.shape[-2:]), layer.kernel_size, layer.stride, layer.padding
            )
            h = pooled.view(*h.shape[: h.dim() - 2], *pooled.shape[-2:])
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Flatten):
            h = h.flatten(2) if per_trial else h.flatten(1)
        elif isinstance(layer, nn.Dropout) and training and layer.p > 0:
            # A run alone draws one mask of its activation's shape: the same draw, for every trial.
            shape = (n, *h.shape[2:]) if per_trial else h.shape
            mask = (
                torch.empty(shape, dtype=h.dtype, device=h.device).bernoulli_(1 - layer.p).div_(1 - layer.p)
            )
            h = h * (mask.unsqueeze(1) if per_trial else mask)
        if isinstance(layer, nn.Linear | nn.Conv2d):
            per_trial = True
    return h.transpose(0, 1)


def stack_model(model: nn.Module, copies: int, sample: torch.Tensor) -> tuple[StackedModel | None, str]:
    """K copies of the model, the fastest way whose output matches the model's own on `sample` (eval
    mode); (None, why) for a model that can't be stacked (buffers such as BatchNorm's running stats)."""
    if any(True for _ in model.buffers()):
        return (
            None,
            f"{type(model).__name__} has buffers (running statistics), which a stacked model can't update",
        )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(sample)
    model.train(was_training)
    layers = [m for m in model.modules() if not list(m.children())]
    tried = []
    for how in ("layers", "vmap"):
        if how == "layers" and not all(isinstance(m, CHAIN_LAYERS) for m in layers):
            tried.append("layers: not a chain of Linear/Conv2d/ReLU/MaxPool2d/Dropout/Flatten")
            continue
        stacked = StackedModel(model, copies, how)
        stacked.train(False)
        try:
            with torch.no_grad():
                got = stacked(sample)
        except Exception as error:  # a forward vmap can't batch
            tried.append(f"{how}: {type(error).__name__}: {error}")
            continue
        if got.shape == (copies, *expected.shape) and torch.allclose(got, expected.expand_as(got), atol=1e-5):
            stacked.train(True)
            return stacked, how
        tried.append(f"{how}: its output differs from the model's own forward")
    return None, "; ".join(tried)


def parameter_bytes(model: nn.Module) -> int:
    return sum(math.prod(p.shape) * p.element_size() for p in model.parameters())
