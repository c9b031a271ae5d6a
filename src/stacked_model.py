"""K copies of one model as one computation: the trials of a batch, each with its own weights.

Two ways, both checked against the model's own forward before use (stack_model):
- layers: a model whose forward is its layers in order (Linear, Conv2d, ReLU, MaxPool2d, Dropout,
  Flatten; our SimpleNet, MLP and CNN) runs as wide layers. The first layer sees the same images for
  every trial, so it is one matmul (or convolution) with K times the outputs, then grouped per trial.
- vmap: any other model through torch.func (functional_call under vmap), slower for the first layer.
Dropout draws one mask of the shape a run alone draws, from the same generator, for all trials
(vmap's randomness="same"): each trial gets exactly the masks its run alone would get.

Trials of different seeds stack too: each seed's trials are a Block of consecutive trials that see their
seed's own shuffle of the images and draw their dropout masks from their seed's own generator. The first
layer is then one matmul (or convolution) per block; after it every trial's activations are its own anyway.

Gradients (loss_and_grads): a dense chain (Linear, ReLU, Dropout, Flatten: SimpleNet, the MLP) gets each
trial's cross-entropy gradient written out, (softmax - one-hot) / N back through the layers, a few wide
operations where autograd records and replays a graph of many small ones (the default model's stacked
step: 0.73 ms against 1.05 ms for 10 trials). It is the arithmetic autograd does, in another order (float
rounding only; tests/test_batched.py compares them). Other models go through autograd.
"""

import copy
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

CHAIN_LAYERS = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Flatten)
DENSE_LAYERS = (nn.Linear, nn.ReLU, nn.Dropout, nn.Flatten)  # a chain whose gradients are written out


@dataclass
class Block:
    """The inputs of `trials` consecutive trials of a stack that see other images than the others (another
    seed's shuffle), and the generator their dropout masks come from (their seed's, as a run alone's)."""

    trials: int
    images: torch.Tensor
    generator: torch.Generator


# What a stack's trials see: one batch of images for all (dropout masks from torch's default generator), or
# a batch per Block, the blocks in stack order.
Inputs = torch.Tensor | list[Block]


def block_spans(sizes: list[int]) -> list[slice]:
    """Each block's trials as a slice of the stack, from the blocks' sizes in stack order."""
    ends = list(itertools.accumulate(sizes))
    return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def labels_per_trial(labels: torch.Tensor, trials: int) -> torch.Tensor:
    """Labels [N] that every trial sees, or [N, K] of trials that saw other images, as [N, K]."""
    return labels.view(-1, 1).expand(-1, trials) if labels.dim() == 1 else labels


class StackedModel:
    """Stacked parameters ([K, ...] leaf tensors, by the model's parameter names) and a forward that maps
    a batch of images (or a batch per block of trials) to logits [K, N, classes]. `models`: each trial's
    initial weights (one model object repeated for trials of one seed)."""

    def __init__(self, models: list[nn.Module], how: str) -> None:
        model = models[0]
        self.template = copy.deepcopy(model)
        stacked, _ = stack_module_state(models)
        self.params = {name: value.detach().clone().requires_grad_() for name, value in stacked.items()}
        self.how = how
        self.training = True
        self.dense = False
        if how == "layers":
            self.layers = [m for m in model.modules() if not list(m.children())]
            names = {id(m): name for name, m in model.named_modules()}
            self.layer_names = [names[id(m)] for m in self.layers]
            self.dense = all(isinstance(m, DENSE_LAYERS) for m in self.layers)
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

    def __call__(self, images: Inputs) -> torch.Tensor:
        if self.how == "layers":
            return wide_forward(self.layers, self.layer_names, self.params, images, self.training)
        if isinstance(images, torch.Tensor):
            return self.vmapped(self.params, images)
        logits = []
        for block, span in zip(images, block_spans([b.trials for b in images]), strict=True):
            # each block's forward draws its dropout masks from its own generator
            params = {name: value[span] for name, value in self.params.items()}
            default_state = torch.get_rng_state()
            torch.set_rng_state(block.generator.get_state())
            try:
                logits.append(self.vmapped(params, block.images))
                block.generator.set_state(torch.get_rng_state())
            finally:
                torch.set_rng_state(default_state)
        return torch.cat(logits)

    def loss_and_grads(self, images: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each trial's mean cross-entropy on the batch [K] (detached) and the gradients of their sum, one
        per stacked parameter in the order of `params` (contiguous, laid out as the stack). `labels`: [N]
        for images all trials see, [N, K] for blocks."""
        if not self.dense:
            losses = trial_losses(self(images), labels)
            # autograd.grad does not promise the parameter's layout (bmm's is transposed); torch's fused
            # kernels read a gradient in it
            grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
            return losses.detach(), [g.contiguous() for g in grads]
        with torch.no_grad():
            tape: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor | None]] = []
            logits = wide_forward(self.layers, self.layer_names, self.params, images, self.training, tape)
            log_probs = log_softmax_per_trial(logits)  # [N, K, classes]
            n, k = log_probs.shape[:2]
            picked = labels_per_trial(labels, k).unsqueeze(2)
            losses = log_probs.gather(2, picked).squeeze(2).mean(0).neg_()
            grad = log_probs.exp_()  # d(sum of the trials' mean losses)/d(logits): (softmax - one-hot) / N
            grad.scatter_add_(2, picked, torch.full((n, k, 1), -1.0, dtype=grad.dtype)).div_(n)
            grads = dense_backward(tape, self.params, grad)
        return losses, [grads[name] for name in self.params]

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
    images: Inputs,
    training: bool,
    tape: list | None = None,
) -> torch.Tensor:
    """The chain of layers for K trials at once. Activations are [N, K, features...] once they differ per
    trial; before the first layer they are the images, the same for all, or a block's own. A `tape`
    records, for dense_backward, each layer with its name, its input (for the first layer over blocks:
    each block's trial count and input) and (ReLU: its output; Dropout: its mask) what its gradient needs."""
    blocks = None if isinstance(images, torch.Tensor) else images
    first = layers[0]

    def as_input(batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if isinstance(first, nn.Linear):
            return batch.reshape(n, -1)
        return batch.reshape(n, first.in_channels, *batch.shape[-2:])

    if blocks is None:
        h = as_input(images)
    elif not isinstance(first, nn.Linear | nn.Conv2d):
        raise ValueError(
            f"trials of several seeds stack as layers only from a first Linear or Conv2d: {first}"
        )
    n = h.shape[0] if blocks is None else blocks[0].images.shape[0]
    per_trial = False
    for position, (layer, name) in enumerate(zip(layers, names, strict=True)):
        kept = None
        if blocks is not None and position == 0:  # each block's images through its trials' slices
            h_in = [(block.trials, as_input(block.images)) for block in blocks]
            spans = block_spans([block.trials for block in blocks])
            outputs = [
                weighted_layer(
                    layer, name, {key: value[span] for key, value in params.items()}, inputs, False
                )
                for (_, inputs), span in zip(h_in, spans, strict=True)
            ]
            h = torch.cat(outputs, dim=1)
        elif isinstance(layer, nn.Linear | nn.Conv2d):
            h_in, h = h, weighted_layer(layer, name, params, h, per_trial)
        else:
            h_in = h
        if isinstance(layer, nn.MaxPool2d):
            pooled = F.max_pool2d(
                h.reshape(n, -1, *h.shape[-2:]), layer.kernel_size, layer.stride, layer.padding
            )
            h = pooled.view(*h.shape[: h.dim() - 2], *pooled.shape[-2:])
        elif isinstance(layer, nn.ReLU):
            h = kept = F.relu(h)
        elif isinstance(layer, nn.Flatten):
            h = h.flatten(2) if per_trial else h.flatten(1)
        elif isinstance(layer, nn.Dropout) and training and layer.p > 0:
            # A run alone draws one mask of its activation's shape: the same draw, for every trial (of a
            # block: from its generator).
            shape = (n, *h.shape[2:]) if per_trial else h.shape
            if blocks is None:
                mask = dropout_mask(shape, layer.p, h, None)
                kept = mask.unsqueeze(1) if per_trial else mask
            else:
                kept = torch.cat(
                    [
                        dropout_mask(shape, layer.p, h, block.generator)
                        .unsqueeze(1)
                        .expand(n, block.trials, *shape[1:])
                        for block in blocks
                    ],
                    dim=1,
                )
            h = h * kept
        if tape is not None:
            tape.append((layer, name, h_in, kept))
        if isinstance(layer, nn.Linear | nn.Conv2d):
            per_trial = True
    return h.transpose(0, 1)


def weighted_layer(
    layer: nn.Module, name: str, params: dict[str, torch.Tensor], h: torch.Tensor, per_trial: bool
) -> torch.Tensor:
    """A Linear or Conv2d layer for the trials of `params` ([K, ...]): inputs [N, K, ...] that differ per
    trial, or [N, ...] that all see; outputs [N, K, ...]."""
    weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
    n, k = h.shape[0], weight.shape[0]
    if isinstance(layer, nn.Linear):
        if per_trial:
            h = torch.bmm(h.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)
        else:
            h = (h @ weight.reshape(-1, weight.shape[-1]).T).view(n, k, -1)
        return h + bias if bias is not None else h
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
    return h.view(n, k, -1, *h.shape[-2:])


def dropout_mask(
    shape: tuple[int, ...], p: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """The mask a run alone's dropout draws (scaled by 1 / (1 - p)), from `generator` (None: torch's)."""
    mask = torch.empty(shape, dtype=like.dtype, device=like.device)
    return mask.bernoulli_(1 - p, generator=generator).div_(1 - p)


def dense_backward(
    tape: list[tuple[nn.Module, str, torch.Tensor | list[tuple[int, torch.Tensor]], torch.Tensor | None]],
    params: dict[str, torch.Tensor],
    grad: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The gradients of the stacked parameters (by name) from the gradient of the logits [N, K, classes],
    back through a dense chain wide_forward recorded."""
    grads: dict[str, torch.Tensor] = {}
    for layer, name, h_in, kept in reversed(tape):
        if isinstance(layer, nn.Linear):
            weight = params[f"{name}.weight"]  # [K, out, in]
            if f"{name}.bias" in params:
                grads[f"{name}.bias"] = grad.sum(0)
            if isinstance(h_in, list):  # the first layer over blocks: each block's inputs [N, in]
                spans = block_spans([trials for trials, _ in h_in])
                grads[f"{name}.weight"] = torch.cat(
                    [
                        (grad[:, span].reshape(grad.shape[0], -1).T @ inputs).view(trials, *weight.shape[1:])
                        for (trials, inputs), span in zip(h_in, spans, strict=True)
                    ]
                )
                break
            if h_in.dim() == 2:  # the first layer: the same inputs [N, in] for every trial
                k, out = weight.shape[:2]
                grads[f"{name}.weight"] = (grad.reshape(-1, k * out).T @ h_in).view_as(weight)
                break
            per_trial = grad.transpose(0, 1)  # [K, N, out]
            grads[f"{name}.weight"] = torch.bmm(per_trial.transpose(1, 2), h_in.transpose(0, 1))
            grad = torch.bmm(per_trial, weight).transpose(0, 1)
        elif isinstance(layer, nn.ReLU):
            grad = grad * (kept > 0)
        elif isinstance(layer, nn.Dropout):
            grad = grad if kept is None else grad * kept
        else:  # Flatten
            grad = grad.reshape(h_in.shape)
    return grads


def log_softmax_per_trial(logits: torch.Tensor) -> torch.Tensor:
    """Each trial's log-probabilities: logits [K, N, classes] -> [N, K, classes] (a view). Computed over the
    classes as dimension 1 of [N, classes, K], the trials innermost: torch's CPU log-softmax over a last
    dimension of 10 classes takes about 0.2 us a row, so for 10 to 20 trials it is 4 to 6x slower that way."""
    return torch.log_softmax(logits.permute(1, 2, 0).contiguous(), dim=1).transpose(1, 2)


def trial_losses(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Each trial's cross-entropy over the batch: logits [K, N, classes] -> [K] (the classes as dimension 1,
    as log_softmax_per_trial has them); labels [N], or [N, K] when the trials saw other images."""
    per_trial = labels_per_trial(labels, logits.shape[0])
    losses = F.cross_entropy(logits.permute(1, 2, 0), per_trial, reduction="none")  # [N, K]
    return losses.mean(0) if reduction == "mean" else losses.sum(0)


def stack_model(
    model: nn.Module, copies: int, sample: torch.Tensor, several_seeds: bool = False
) -> tuple[StackedModel | None, str]:
    """K copies of the model, the fastest way whose output matches the model's own on `sample` (eval
    mode; for trials of several seeds, fed as blocks); (None, why) for a model that can't be stacked
    (buffers such as BatchNorm's running stats)."""
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
        if how == "layers" and several_seeds and not isinstance(layers[0], nn.Linear | nn.Conv2d):
            tried.append("layers: trials of several seeds need a first Linear or Conv2d layer")
            continue
        stacked = StackedModel([model] * copies, how)
        stacked.train(False)
        inputs: Inputs = sample
        if several_seeds:
            inputs = [Block(1, sample, torch.Generator()), Block(copies - 1, sample, torch.Generator())]
        try:
            with torch.no_grad():
                got = stacked(inputs)
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
