"""Gradients for attribution (AtP, AtP*): how the probe objective changes, to first order, when a
target's contribution is replaced, for every target from one forward and one backward.

The forward is the model's own, with gradients enabled from the embedding output on (the model's
parameters never require a gradient: nothing reaches them). Hooks keep what each target
contributes: a layer's residual update (its output minus its input), an attention or MLP block's
output, a head's slice of the attention output projection's input -- the very tensors that
:class:`~neuro_scan.backend.base.Intervention` replaces -- and autograd gives the objective's
gradient with respect to each.

GradDrop (Kramár et al. 2024, AtP*): for layer l, the gradient reaching the layers below l with
layer l's residual contribution cut from the backward, i.e. the gradient at layer l's input is the
gradient at its output (the skip path alone). Backpropagation below l is linear in that gradient,
so each l costs one partial backward through layers 0..l-1 only: (L - 1) / 2 backward passes in all.

The QK fix needs, per layer, the attention probabilities, the objective's gradient with respect to
them, and the gradient of <that gradient, probabilities> with respect to the layer's input (the
linear part of the softmax's response); :func:`attention_after` recomputes probabilities exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch

from neuro_scan.backend import components
from neuro_scan.backend.base import AttentionGradient, GradientPass, Intervention, Target, TokenBatch
from neuro_scan.backend.transformers import TransformersBackend, _hidden_arg, _replaced_forwards


class _Captured(Exception):
    """Raised inside a forward once what was asked for is captured: the rest is not run."""


def gradient_pass(backend: TransformersBackend, batch: TokenBatch, replacements: Mapping[Target, torch.Tensor | None],
                  objective: Callable[[torch.Tensor], torch.Tensor], *, drop_layers: bool = False,
                  attention: bool = False) -> GradientPass:
    num_layers = backend.num_layers
    inputs: list[torch.Tensor | None] = [None] * num_layers
    outputs: list[torch.Tensor | None] = [None] * num_layers
    kept: dict[tuple[int, str], torch.Tensor] = {}  # (layer, part) -> block output; (layer, "head") -> projection input
    weights: list[torch.Tensor | None] = [None] * num_layers

    def layer_input(index: int):
        def hook(_module, args, kwargs):
            hidden = _hidden_arg(args, kwargs)
            if index == 0:  # the graph starts here: everything after depends on this leaf
                hidden = hidden.detach().requires_grad_(True)
                args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            inputs[index] = hidden
            return args, kwargs

        return hook

    def layer_output(index: int):
        def hook(_module, _args, output):
            outputs[index] = backend._architecture.stream(output)

        return hook

    def keep_output(key: tuple[int, str]):
        def hook(_module, _args, output):
            kept[key] = output[0] if isinstance(output, tuple) else output

        return hook

    def keep_input(key: tuple[int, str]):
        def hook(_module, args):
            kept[key] = args[0]

        return hook

    def keep_weights(index: int):
        def hook(_module, _args, output):
            weights[index] = output[1]

        return hook

    # modules found before any hook is on: finding attention modules runs a forward of its own
    blocks = {key: backend._target_module(Target(key[0], key[1], 0 if key[1] == "head" else -1))
              for key in sorted({(t.layer, t.part) for t in replacements if t.part != "layer"})}
    attentions = [backend._attention_module(index) for index in range(num_layers)] if attention else []
    with torch.inference_mode(False), torch.enable_grad(), contextlib.ExitStack() as stack:
        for index, layer in enumerate(backend.layers):
            stack.callback(layer.register_forward_pre_hook(layer_input(index), with_kwargs=True).remove)
            stack.callback(layer.register_forward_hook(layer_output(index)).remove)
        for key, module in blocks.items():
            handle = (module.register_forward_pre_hook(keep_input(key)) if key[1] == "head"
                      else module.register_forward_hook(keep_output(key)))
            stack.callback(handle.remove)
        for index, module in enumerate(attentions):
            if module is not None:
                stack.callback(module.register_forward_hook(keep_weights(index)).remove)
        extra = stack.enter_context(backend._eager_attention()) if attention else {}
        backend._base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **extra)
        values = objective(outputs[-1])
        value_of = {t: _contribution(t, inputs, outputs, kept, backend.info.num_heads) for t in replacements}
        # what the gradient is taken with respect to: one tensor per target (a head: its projection's input)
        source_of = {t: outputs[t.layer] if t.part == "layer" else kept[(t.layer, t.part)] for t in replacements}
        sources = list({id(s): s for s in [*source_of.values(), *outputs, *[w for w in weights if w is not None]]}.values())
        position = {id(s): i for i, s in enumerate(sources)}
        grads = _grads(values.sum(), sources, None, retain=drop_layers or attention)
        grad_of = {t: _piece(grads[position[id(source_of[t])]], t, backend.info.num_heads) for t in replacements}
        mask = batch.attention_mask.to(torch.float32)
        change = {t: _change(grad_of[t], value_of[t], replacements[t], mask) for t in replacements}
        dropped = _dropped(replacements, source_of, value_of, change, inputs, grads, position, outputs, mask,
                           backend.info.num_heads) if drop_layers else {}
        sensitivity = [_attention_gradient(w, grads[position[id(w)]], inputs[index]) if w is not None else None
                       for index, w in enumerate(weights)] if attention else []
    return GradientPass(values.detach(), change, dropped, sensitivity)


def attention_after(backend: TransformersBackend, batch: TokenBatch, layer: int, start_stream: torch.Tensor | None,
                    interventions: Mapping[Target, Intervention]) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 <= layer < backend.num_layers - 1:
        raise ValueError(f"layer must be in 0..{backend.num_layers - 2} (a layer with one after it)")
    attention = backend._attention_module(layer + 1)
    if attention is None:
        raise ValueError(f"layer {layer + 1} has no attention")
    captured: dict[str, torch.Tensor] = {}
    if start_stream is not None:
        start_stream = start_stream.to(backend.layer_device(layer))
    resumed = backend._architecture.as_output(start_stream) if start_stream is not None else None
    replacements: dict[int, Callable] = {j: (lambda *a, **k: resumed) for j in range(layer)}

    def keep_stream(_module, _args, output):
        captured["stream"] = backend._architecture.stream(output)

    def keep_weights(_module, _args, output):
        captured["weights"] = output[1]
        raise _Captured

    with torch.inference_mode(), contextlib.ExitStack() as stack:
        for target, intervention in interventions.items():
            if target.layer != layer:
                raise ValueError(f"intervention {target} is not in layer {layer}")
            if target.part == "layer":
                replacements[layer] = backend._skipping_forward(backend.layers[layer], intervention.rows, intervention.value)
            else:
                stack.callback(backend._component_hook(target, intervention).remove)
        stack.callback(backend.layers[layer].register_forward_hook(keep_stream).remove)
        stack.callback(attention.register_forward_hook(keep_weights).remove)
        extra = stack.enter_context(backend._eager_attention())
        stack.enter_context(_replaced_forwards(backend.layers, replacements))
        with contextlib.suppress(_Captured):
            backend._base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **extra)
    if captured.get("weights") is None:
        raise ValueError(f"could not capture the attention probabilities of layer {layer + 1}")
    return captured["stream"], captured["weights"].float()


def _contribution(target: Target, inputs: list, outputs: list, kept: dict, num_heads: int) -> torch.Tensor:
    """What the target adds (the tensor an Intervention replaces)."""
    if target.part == "layer":
        return outputs[target.layer] - inputs[target.layer]
    return _piece(kept[(target.layer, target.part)], target, num_heads)


def _piece(tensor: torch.Tensor, target: Target, num_heads: int) -> torch.Tensor:
    return components.head_slice(tensor, target.head, num_heads) if target.part == "head" else tensor


def _grads(output: torch.Tensor, sources: list[torch.Tensor], grad_output: torch.Tensor | None,
           retain: bool) -> list[torch.Tensor]:
    """d output / d each source (zeros where a source does not reach ``output``)."""
    found = torch.autograd.grad(output, sources, grad_outputs=grad_output, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(s) if g is None else g for s, g in zip(sources, found)]


def _change(grad: torch.Tensor, value: torch.Tensor, replacement: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per row: sum over real tokens of grad . (replacement - value), in float32. (OPT's MLP works on
    the tokens flattened to [B * T, d]: shapes are taken back to [B, T, d].)"""
    value = value.detach().float().reshape(*mask.shape, -1)
    delta = -value if replacement is None else replacement.to(value.device, torch.float32) - value
    return ((grad.float().reshape(*mask.shape, -1) * delta).sum(dim=-1) * mask).sum(dim=-1)


def _dropped(replacements: Mapping, source_of: dict, value_of: dict, change: dict, inputs: list, grads: list,
             position: dict, outputs: list, mask: torch.Tensor, num_heads: int) -> dict[Target, torch.Tensor]:
    """GradDrop: per target, [L, B] first-order changes with each layer's contribution cut from the backward."""
    num_layers = len(inputs)
    dropped = {t: change[t].unsqueeze(0).repeat(num_layers, 1) for t in replacements}
    for target in replacements:
        dropped[target][target.layer] = 0
    for cut in range(1, num_layers):
        below = [t for t in replacements if t.layer < cut]
        if not below:
            continue
        sources = list({id(source_of[t]): source_of[t] for t in below}.values())
        local = {id(s): i for i, s in enumerate(sources)}
        # the gradient at layer `cut`'s input is the one at its output: the skip path alone
        found = _grads(inputs[cut], sources, grads[position[id(outputs[cut])]], retain=True)
        for target in below:
            grad = _piece(found[local[id(source_of[target])]], target, num_heads)
            dropped[target][cut] = _change(grad, value_of[target], replacements[target], mask)
    return dropped


def _attention_gradient(weights: torch.Tensor, grad: torch.Tensor, layer_input: torch.Tensor) -> AttentionGradient:
    linear = (grad.detach() * weights).sum()
    (input_grad,) = _grads(linear, [layer_input], None, retain=True)
    return AttentionGradient(weights.detach().float(), grad.detach().float(), input_grad.detach().float())
