"""Find a causal LM's parts from the model itself, for any decoder-only architecture.

neuro-scan needs from a model: the list of decoder layers, the module that runs them (called with
``input_ids``/``attention_mask``), what turns the last layer's output into logits (final norm,
projections, the unembedding, logit scaling or soft-capping) and, for attention entropy, each
layer's attention module if it has one. Rather than a table of model types, we read them off the
model:

- the layer list is the ``nn.ModuleList`` of the text decoder (``get_decoder()``) holding
  ``num_hidden_layers`` (text config) modules; the decoder is its nearest ancestor taking ``input_ids``;
- one traced forward pass then follows the data: the model must be causal, each layer must run at
  most once, in order, and feed the next the stream unchanged and nothing else (else skipping a layer
  would not equal deleting it), and the modules called on the stream between the last layer and the
  unembedding (``get_output_embeddings()``) are the final modules. Layers that do not run on text
  (Mllama's cross-attention layers, without an image) are left out: on text they do nothing;
- logit scaling and soft-capping come from the config, and the whole lens must reproduce the traced
  logits from the last layer's output.

A model failing any check is refused with the reason, so the lens can never silently differ from
the model's logits. ``EXCEPTIONS`` names the model types whose stack is not one residual stream
but that the checks would not catch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from neuro_scan.errors import UsageError

# model_type -> why neuro-scan cannot map it (see docs/architectures.md)
EXCEPTIONS: dict[str, str] = {
    # its config has no single layer count: a byte-level encoder, a global transformer over patches
    # and a byte-level decoder, joined by cross-attention
    # a right-padded row's real tokens get other outputs than the row alone (measured on a tiny model):
    # its sparse-attention indexer picks keys across the padding, so batched scores would depend on the batch
    **dict.fromkeys(("dots3_note", "dots3_note_text"),
                    "a model whose sparse-attention indexer lets padding change the real tokens' outputs, "
                    "so scores would depend on how prompts are batched"),
    "blt": "a byte-latent transformer (local encoder, global transformer over patches, local decoder), "
           "not one stack of layers over one residual stream",
    # speculative-decoding drafters: their forward reads the main model's key/value states
    **dict.fromkeys(("gemma4_assistant", "gemma4_unified_assistant"),
                    "a speculative-decoding drafter that reads the main model's key/value states, "
                    "not a standalone language model"),
}

# config fields that rescale the logits (or, equivalently, the unembedding's input): multiply or divide
LOGIT_SCALES = {"logit_scale": True, "lm_head_multiplier": True, "logits_scaling": False,
                "logits_mup_width_multiplier": False}
# config fields that soft-cap the logits: cap * tanh(logits / cap)
LOGIT_SOFTCAPS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def refusal(config) -> str | None:
    """Why a model with this config is not a decoder-only causal LM neuro-scan maps, or None."""
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        return (f"'{model_type}' is an encoder-decoder model: its decoder reads the encoder's output, "
                "and neuro-scan maps decoder-only causal LMs")
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return (f"'{model_type}' is an encoder-only (masked-LM) model: every token attends both ways, "
                "and neuro-scan maps decoder-only causal LMs")
    return exception(model_type)


def exception(model_type: str) -> str | None:
    """Why this model type is in ``EXCEPTIONS``, or None."""
    return f"'{model_type}' is {EXCEPTIONS[model_type]}" if model_type in EXCEPTIONS else None


def legacy_attention(model_class: type) -> bool:
    """Whether this model class's code predates transformers' attention interface: it cannot switch
    attention implementation after loading, and returns attention weights only when asked with
    ``output_attentions`` (transformers' own test for the first, a private classmethod)."""
    return not model_class._can_set_attn_implementation()


@dataclass
class Architecture:
    """Where a model's parts are."""

    decoder: nn.Module
    layers: list[nn.Module]  # the layers that run on text, in order
    layers_path: str  # where the model's ModuleList of layers is
    idle: list[int]  # positions in that list of layers that do not run on text
    final_modules: list[nn.Module]
    lm_head: nn.Module
    logit_scale: float | None
    softcap: float | None
    vocab_size: int  # logits past it (padding rows of the unembedding) are dropped
    tuple_outputs: int  # 0: layers return the stream; n: a tuple of n whose first item is the stream

    def stream(self, output) -> torch.Tensor:
        """The residual stream in what a layer returned."""
        return _first(output)

    def as_output(self, stream: torch.Tensor, like=None):
        """What a layer returns, carrying ``stream`` (and the rest of ``like``, or Nones)."""
        if not self.tuple_outputs:
            return stream
        if like is not None:
            return type(like)((stream, *like[1:]))
        return (stream, *([None] * (self.tuple_outputs - 1)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final modules, unembedding and logit post-processing: residual -> float32 logits."""
        for module in self.final_modules:
            hidden = module(hidden)
        weight = self.lm_head.weight
        logits = self.lm_head(hidden.to(weight.dtype)).float()[..., : self.vocab_size]  # (Mamba keeps a float32 stream)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def discover(model: nn.Module, input_ids: torch.Tensor) -> Architecture:
    """The parts of ``model``, checked on one traced forward pass over ``input_ids`` ([1, T], T >= 2)."""
    config = model.config
    model_type = config.model_type
    why = refusal(config)
    if why:
        raise UsageError(f"--model: {why}")
    text_config = config.get_text_config(decoder=True)
    lm_head = model.get_output_embeddings()
    if not isinstance(getattr(lm_head, "weight", None), torch.Tensor):
        raise UsageError(f"--model: this {model_type} model has no unembedding (get_output_embeddings)")
    paths = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    module_list = _find_layers(model, int(getattr(text_config, "num_hidden_layers", 0) or 0))
    if module_list is None:
        raise UsageError(f"--model: could not find the decoder layers of this {model_type} model")
    decoder = _runner(model, paths, paths[module_list])
    trace = _Trace(model, module_list, lm_head)
    trace.run(input_ids)
    final_modules, tuple_outputs = trace.check(model_type, int(text_config.hidden_size))
    expected = trace.logits.float()
    ran = [index for index, _, _ in trace.layer_calls]
    architecture = Architecture(
        decoder=decoder,
        layers=[module_list[index] for index in ran],
        layers_path=paths[module_list],
        idle=[index for index in range(len(module_list)) if index not in ran],
        final_modules=final_modules,
        lm_head=lm_head,
        logit_scale=_logit_scale(text_config),
        softcap=next((float(getattr(text_config, k)) for k in LOGIT_SOFTCAPS if getattr(text_config, k, None)), None),
        vocab_size=int(expected.shape[-1]),
        tuple_outputs=tuple_outputs,
    )
    with torch.no_grad():
        got = architecture.logits(trace.streams[-1]).to(expected.device)  # a device map may put the head elsewhere
    tol = _tolerance(lm_head.weight.dtype)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tol, atol=tol * float(expected.abs().max())):
        why = ("post-processing of the logits neuro-scan does not know" if trace.head_reached else
               "the unembedding's input is not the last layer's output passed through modules that take it alone")
        raise UsageError(f"--model: the logits of this {model_type} model are not reproduced from its last "
                         f"decoder layer ({why}); not supported")
    return architecture


def find_attention(architecture: Architecture, input_ids: torch.Tensor, **kwargs) -> list[nn.Module | None]:
    """Each layer's attention module: the outermost module inside the layer whose forward returns
    attention weights ([batch, heads, T, T] as its second output) on ``input_ids`` ([1, T]); None for
    layers with none (state-space, linear recurrence). Call it under eager attention."""
    width = input_ids.shape[1]
    found: list[nn.Module | None] = [None] * len(architecture.layers)
    owner = {module: index for index, layer in enumerate(architecture.layers)
             for module in layer.modules() if module is not layer}

    def hook(module, _args, output):
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if isinstance(weights, torch.Tensor) and weights.dim() == 4 and weights.shape[-2:] == (width, width):
            found[owner[module]] = module  # an enclosing module's hook runs later and wins

    handles = [module.register_forward_hook(hook) for module in owner]
    try:
        with torch.no_grad():
            architecture.decoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                                 **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _logit_scale(config) -> float | None:
    for name, multiply in LOGIT_SCALES.items():
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
            return float(value) if multiply else 1.0 / float(value)
    return None


def _find_layers(model: nn.Module, count: int) -> nn.ModuleList | None:
    """The shallowest ModuleList of ``count`` modules in the text decoder (else anywhere); failing
    that, the shallowest list of decoder layers (transformers' GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    try:
        roots = [model.get_decoder(), model]
    except (AttributeError, NotImplementedError, ValueError):
        roots = [model]
    lists = [[(name.count("."), found) for name, found in root.named_modules() if isinstance(found, nn.ModuleList)
              and len(found) > 0] for root in roots]
    for test in (lambda found: len(found) == count,
                 lambda found: all(isinstance(layer, GradientCheckpointingLayer) for layer in found)):
        for candidates in lists:
            matching = [(depth, found) for depth, found in candidates if test(found)]
            if matching:
                return min(matching, key=lambda item: item[0])[1]
    return None


def _runner(model: nn.Module, paths: dict[nn.Module, str], layers_path: str) -> nn.Module:
    """The nearest ancestor of the layer list whose forward takes ``input_ids``."""
    by_path = {name: module for module, name in paths.items()}
    parts = layers_path.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        module = by_path[".".join(parts[:depth])]
        if "input_ids" in inspect.signature(module.forward).parameters:
            return module
    return model


class _Trace:
    """One forward pass over a row and its copy with the last token changed, recording each layer's
    inputs and output and every call after the last layer."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, lm_head: nn.Module):
        self.model, self.layers, self.lm_head = model, layers, lm_head
        self.layer_calls: list[tuple[int, object, object]] = []  # (layer index, input stream, output)
        self.layer_inputs: list[list] = []  # every other argument of each layer call
        self.after: list[tuple[int, int, nn.Module, tuple, object]] = []  # (start, end, module, (args, kwargs), output)
        self.clock = 0
        self.layers_done = 0
        self.logits: torch.Tensor | None = None
        self.head_reached = False  # whether the final modules lead to exactly the unembedding's input

    def run(self, input_ids: torch.Tensor) -> None:
        changed = input_ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % int(self.lm_head.weight.shape[0])
        batch = torch.cat([input_ids, changed])
        indices = {layer: i for i, layer in enumerate(self.layers)}
        inside_layers = {m for layer in self.layers for m in layer.modules() if m is not layer}
        starts: dict[int, list[int]] = {}

        def pre(module, args, kwargs):
            self.clock += 1
            starts.setdefault(id(module), []).append(self.clock)

        def post(module, args, kwargs, output):
            self.clock += 1
            start = starts[id(module)].pop()
            if module in indices:
                hidden = args[0] if args else kwargs.get("hidden_states")
                self.layer_calls.append((indices[module], hidden, output))
                self.layer_inputs.append([*args[1:], *(v for k, v in kwargs.items() if k != "hidden_states" or args)])
                self.layers_done = self.clock
                self.after.clear()
            elif self.layer_calls and start > self.layers_done:
                self.after.append((start, self.clock, module, (args, kwargs), output))

        handles = []
        try:
            for module in self.model.modules():
                if module not in inside_layers and module is not self.layers:
                    handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(module.register_forward_hook(post, with_kwargs=True))
            with torch.no_grad():
                self.logits = self.model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()

    @property
    def streams(self) -> list[torch.Tensor]:
        return [_first(output) for _, _, output in self.layer_calls]

    def check(self, model_type: str, hidden_size: int) -> tuple[list[nn.Module], int]:
        """The final modules and the layers' output form; a UsageError where the stack is not one
        causal residual stream through the layers."""
        order = [index for index, _, _ in self.layer_calls]
        if not order or order != sorted(set(order)):
            repeated = max(set(order), key=order.count) if order else 0
            how = f"layer {repeated} runs {order.count(repeated)} times" if order.count(repeated) > 1 else "out of order"
            raise UsageError(f"--model: the decoder layers of this {model_type} model do not run once each in order "
                             f"({how}); neuro-scan maps a single pass through the layers")
        for (_, _, before), (index, hidden, _), others in zip(self.layer_calls, self.layer_calls[1:], self.layer_inputs[1:]):
            if not _same(hidden, _first(before)):
                raise UsageError(f"--model: this {model_type} model changes the stream between layers "
                                 f"{index - 1} and {index}; skipping a layer would not equal deleting it")
            passed = before[1:] if isinstance(before, (tuple, list)) else ()
            if any(item is other for item in passed if item is not None for other in others):
                raise UsageError(f"--model: the layers of this {model_type} model hand each other a second state "
                                 "besides the residual stream; skipping a layer would not equal deleting it")
        stream = self.streams[-1]
        if not (isinstance(stream, torch.Tensor) and stream.dim() == 3 and stream.shape[-1] == hidden_size):
            found = f"[{', '.join(map(str, stream.shape))}]" if isinstance(stream, torch.Tensor) else type(stream).__name__
            raise UsageError(f"--model: the decoder layers of this {model_type} model do not return a "
                             f"[batch, tokens, {hidden_size}] residual stream (they return {found})")
        earlier, tol = slice(0, stream.shape[1] - 1), _tolerance(stream.dtype)
        if not torch.allclose(stream[0, earlier], stream[1, earlier], rtol=tol, atol=tol * float(stream.abs().max())):
            raise UsageError(f"--model: this {model_type} model is not causal (a token's output depends on the "
                             "tokens after it); neuro-scan maps decoder-only causal LMs")
        first = self.layer_calls[0][2]
        return self._final_chain(model_type, stream), len(first) if isinstance(first, (tuple, list)) else 0

    def _final_chain(self, model_type: str, stream: torch.Tensor) -> list[nn.Module]:
        """The outermost modules called on the stream, one after the other, between the last layer
        and the unembedding (whose input the final logits check judges)."""
        head = next((call for call in self.after if call[2] is self.lm_head), None)
        if head is None:
            raise UsageError(f"--model: the unembedding of this {model_type} model does not run after its last layer")
        # a head module wrapping the unembedding is looked into, not called as a whole
        calls = [call for call in self.after if call[0] < head[0] and not call[1] > head[1]]
        outermost = [call for call in calls if not any(o[0] < call[0] and call[1] < o[1] for o in calls)]
        chain: list[nn.Module] = []
        for _start, _end, module, (args, kwargs), output in sorted(outermost, key=lambda call: call[0]):
            inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if len(inputs) == 1 and _same(inputs[0], stream) and isinstance(output, torch.Tensor):
                chain.append(module)
                stream = output
        args, kwargs = head[3]
        self.head_reached = _same(next(iter((*args, *kwargs.values())), None), stream)
        return chain


def _tolerance(dtype: torch.dtype) -> float:
    """How far a recomputation may drift: rounding in the model's dtype (a 16-bit model rounds where
    our float32 lens does not); a wrong part of the lens is off by far more."""
    return max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _same(a, b) -> bool:
    return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                      and a.shape == b.shape and torch.equal(a, b))
