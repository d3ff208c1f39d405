"""The transformers backend: hooks on a Hugging Face model's own decoder layers.

We never re-implement a model's forward. Every run goes through the model's own base-model
forward, so embeddings, position embeddings, attention masks (sliding windows included) and
rotary tables are built exactly as the model builds them, and each layer receives exactly the
arguments the model passes it. Around that forward we only:

- record layer inputs/outputs (forward hooks) to capture the residual stream;
- replace a layer's ``forward`` for the duration of one run, to pass the stream through
  (skip) or to hand the layers after it a cached stream (resume).

A model placed by a device map (accelerate's big-model loading, its layers spread over GPUs, the
CPU and disk) computes each layer on that layer's execution device: a stream handed to a layer
is moved there, replaced forwards wrap accelerate's own (which loads offloaded weights), and
captured streams stay where they were made unless a capture device is named.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from neuro_scan.backend import architecture, components
from neuro_scan.backend.base import GradientPass, Intervention, LayerSkips, ModelInfo, Target, TokenBatch
from neuro_scan.backend.loading import context_limit, unknown_pieces
from neuro_scan.errors import UsageError

def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


R = TypeVar("R")  # what a reduce function makes of one layer's attention weights


class TransformersBackend:
    """A loaded Hugging Face causal LM behind the :class:`~neuro_scan.backend.base.Backend` protocol."""

    def __init__(self, model: nn.Module, tokenizer, model_id: str):
        model_type = model.config.model_type
        model.requires_grad_(False)  # neuro-scan only reads the model: no gradient may ever reach its weights
        self.model = model
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.device = execution_device(model.get_input_embeddings(), torch.device("cpu"))  # where token ids go
        sample = self.tokenize("The quick brown fox", add_special_tokens=True) or [0]
        self._sample = torch.tensor([sample], device=self.device)  # what discovery runs the model on
        self._architecture = architecture.discover(model, self._sample)
        self._attention: list[nn.Module | None] | None = None  # found on first use (one eager forward)
        self.layers: list[nn.Module] = list(self._architecture.layers)
        self._base = self._architecture.decoder
        self._lm_head = self._architecture.lm_head
        config = model.config.get_text_config(decoder=True)
        self.info = ModelInfo(
            model_id=model_id,
            architecture=model_type,
            num_layers=len(self.layers),
            hidden_size=int(config.hidden_size),
            vocab_size=self._architecture.vocab_size,
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            dtype=str(param.dtype).removeprefix("torch."),
            device=str(self.device),
            backend="transformers",
        )
        self._head_device = execution_device((*self._architecture.final_modules, self._lm_head)[0], self.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad if pad is not None else 0)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    @property
    def max_positions(self) -> int | None:
        return context_limit(self.model.config)

    def unknown_pieces(self, text: str) -> list[str]:
        return unknown_pieces(self.tokenizer, text)

    def make_batch(self, sequences: Sequence[Sequence[int]]) -> TokenBatch:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        lengths = mask.sum(dim=1)
        return TokenBatch(ids.to(self.device), mask.to(self.device), lengths.to(self.device))

    # -- running ----------------------------------------------------------------------------

    @torch.inference_mode()
    def run(
        self,
        batch: TokenBatch,
        *,
        skip: LayerSkips | None = None,
        start_layer: int = 0,
        start_stream: torch.Tensor | None = None,
        capture: bool | Collection[int] = False,
        repeat: tuple[int, int] | None = None,
        interventions: Mapping[Target, Intervention] | None = None,
        stop_layer: int | None = None,
        capture_device: torch.device | None = None,
    ) -> list[torch.Tensor | None]:
        num_layers = self.num_layers
        stop = num_layers if stop_layer is None else stop_layer
        if not 0 <= start_layer <= stop <= num_layers:
            raise ValueError(f"need 0 <= start_layer <= stop_layer <= {num_layers}, got {start_layer}, {stop}")
        if (start_layer > 0) != (start_stream is not None):
            raise ValueError("start_stream is required exactly when start_layer > 0")
        if repeat is not None and (capture or stop < num_layers):
            raise ValueError("capture and stop_layer are not defined for a run with a repeated block")
        wanted = set(range(start_layer, stop + 1)) if capture is True else {b for b in capture or () if start_layer <= b}
        wanted.add(stop)  # what a run without capture returns
        streams: list[torch.Tensor | None] = [None] * (num_layers + 1)

        def keep(boundary: int, stream: torch.Tensor) -> None:
            if boundary in wanted:
                streams[boundary] = stream if capture_device is None else stream.to(capture_device)

        if start_stream is not None:
            if start_layer < num_layers:
                start_stream = start_stream.to(self.layer_device(start_layer))
            keep(start_layer, start_stream)
            if start_layer == stop:  # nothing to run
                return streams if capture is not False else [streams[stop]]
        skip = dict(skip or {})

        resumed = self._architecture.as_output(start_stream) if start_stream is not None else None
        replacements: dict[int, Callable] = {j: (lambda *a, **k: resumed) for j in range(start_layer)}
        for j, rows in skip.items():
            if j >= start_layer:
                replacements[j] = self._skipping_forward(self.layers[j], rows)
        later = {t: i for t, i in (interventions or {}).items() if t.layer >= start_layer}
        for target, intervention in later.items():
            if target.part == "layer":
                replacements[target.layer] = self._skipping_forward(self.layers[target.layer], intervention.rows,
                                                                    intervention.value)
        form = self._architecture
        for j in range(stop, num_layers):  # after stop_layer every layer passes the stream through
            replacements[j] = lambda *a, **k: form.as_output(_hidden_arg(a, k))

        def record(index: int):
            def hook(_module, _args, output):
                keep(index + 1, self._architecture.stream(output))

            return hook

        def record_input(_module, args, kwargs):
            keep(0, _hidden_arg(args, kwargs))

        with contextlib.ExitStack() as stack:
            if repeat is not None:
                self._repeat_block(repeat, replacements, stack)
            for target, intervention in later.items():
                if target.part != "layer" and target.layer < stop:
                    stack.enter_context(_hook(self._component_hook(target, intervention)))
            for j in range(start_layer, stop):
                if j + 1 in wanted:
                    stack.enter_context(_hook(self.layers[j].register_forward_hook(record(j))))
            if start_layer == 0 and 0 in wanted:
                stack.enter_context(_hook(self.layers[0].register_forward_pre_hook(record_input, with_kwargs=True)))
            stack.enter_context(_replaced_forwards(self.layers, replacements))
            self._base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return streams if capture is not False else [streams[stop]]

    def layer_device(self, layer: int) -> torch.device:
        """Where decoder layer ``layer`` computes (a stream handed to it must be there)."""
        return execution_device(self.layers[layer], self.device)

    def _repeat_block(self, block: tuple[int, int], replacements: dict[int, Callable], stack: contextlib.ExitStack) -> None:
        """Run layers first..stop-1 a second time right after layer stop-1 (the execution order
        0..stop-1, first..L-1 of layer duplication in layer-scan and mergekit passthrough).
        The second pass gives each layer the very arguments the model passed it the first time."""
        first, stop = block
        if not 0 <= first < stop <= self.num_layers:
            raise ValueError(f"repeat block must satisfy 0 <= first < stop <= {self.num_layers}, got {block}")
        arguments: dict[int, tuple[tuple, dict]] = {}

        def record(index: int):
            def hook(_module, args, kwargs):
                arguments[index] = (args[1:], kwargs)

            return hook

        for index in range(first, stop):
            stack.enter_context(_hook(self.layers[index].register_forward_pre_hook(record(index), with_kwargs=True)))
        last = stop - 1
        # each layer's own forward (accelerate's, where a device map placed it), taken before any is replaced
        own = {index: self.layers[index].forward for index in range(first, stop)}
        first_pass = replacements.get(last, own[last])

        def forward(*args, **kwargs):
            output = first_pass(*args, **kwargs)
            for index in range(first, stop):
                rest, named = arguments[index]
                output = own[index](self._architecture.stream(output), *rest, **named)  # no hooks, no replacement
            return output

        replacements[last] = forward

    @torch.inference_mode()
    def reduce_attention(self, batch: TokenBatch, reduce: Callable[[int, torch.Tensor], R]) -> list[R]:
        """``reduce(layer, weights)`` for every layer, in order, where ``weights`` are that layer's
        attention probabilities, [B, heads, T, T] in float32.

        ``reduce`` runs inside the forward as soon as a layer's weights exist, and the weights are
        dropped before the next layer runs, so memory holds one layer's weights at a time (plus
        what ``reduce`` keeps). Captured under eager attention whatever implementation the model
        was loaded with (SDPA and flash kernels never materialise the weights), then switched
        back. The model still builds its own masks, so sliding-window layers attend exactly as
        they do normally. Layers without attention (state-space, linear recurrence) get None.
        """
        results: list = [None] * self.num_layers
        reduced = [self._attention_module(index) is None for index in range(self.num_layers)]

        def record(index: int):
            def hook(_module, _args, output):
                if output[1] is None:
                    return None
                results[index] = reduce(index, output[1].float())
                reduced[index] = True
                return type(output)((output[0], None, *output[2:]))  # the layer never reads the weights: free them now

            return hook

        with contextlib.ExitStack() as stack:
            for index in range(self.num_layers):
                if (module := self._attention_module(index)) is not None:
                    stack.enter_context(_hook(module.register_forward_hook(record(index))))
            extra = stack.enter_context(self._eager_attention())
            self._base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **extra)
        if not all(reduced):
            raise UsageError(f"--model: could not capture attention weights of this {self.info.architecture} model")
        return results

    def attention_weights(self, batch: TokenBatch) -> list[torch.Tensor]:
        """Every layer's attention probabilities at once ([B, heads, T, T] float32 each): L times
        the memory of :meth:`reduce_attention`; for looking at short inputs."""
        return self.reduce_attention(batch, lambda _layer, weights: weights)

    def _attention_module(self, index: int) -> nn.Module | None:
        """The attention module of decoder layer ``index`` (under eager attention its forward returns
        (output, weights)), or None where the layer has none (state-space, linear recurrence)."""
        if self._attention is None:
            with self._eager_attention() as extra:
                self._attention = architecture.find_attention(self._architecture, self._sample, **extra)
        return self._attention[index]

    @contextlib.contextmanager
    def _eager_attention(self) -> Iterator[dict]:
        """Eager attention for the duration (SDPA and flash kernels never materialise the weights).
        Yields the keyword arguments a forward needs to return them (older model code returns
        them only when asked with ``output_attentions``; it cannot switch implementation after
        loading, so loading gives it eager attention from the start)."""
        previous = self.model.config._attn_implementation
        legacy = architecture.legacy_attention(type(self.model))
        if previous != "eager" and legacy:
            raise UsageError(f"--model: attention weights of this {self.info.architecture} model need eager attention, "
                             "which its transformers code cannot switch to after loading (load it with "
                             "attn_implementation='eager')")
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield {"output_attentions": True} if legacy else {}
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)

    def _skipping_forward(self, layer: nn.Module, rows: torch.Tensor | None, value: torch.Tensor | None = None) -> Callable:
        """The layer's output replaced by its input (skip), or by its input plus ``value`` (the
        mean of the layer's residual update: mean ablation), in ``rows`` (None: every row)."""

        def passed(hidden: torch.Tensor) -> torch.Tensor:
            return hidden if value is None else hidden + value.to(hidden)

        form = self._architecture
        if rows is None:
            return lambda *args, **kwargs: form.as_output(passed(_hidden_arg(args, kwargs)))
        original = layer.forward  # accelerate's where a device map placed the layer: it moves the input
        keep = rows.view(-1, 1, 1)

        def forward(*args, **kwargs):
            hidden = _hidden_arg(args, kwargs)
            output = original(*args, **kwargs)
            stream = form.stream(output)
            return form.as_output(torch.where(keep.to(stream.device), passed(hidden.to(stream.device)), stream),
                                  like=output)

        return forward

    # -- component targets --------------------------------------------------------------------

    def targets_in(self, layer: int) -> list[Target]:
        """Attention and head targets only in layers with attention weights: a state-space or
        linear-recurrence layer has neither."""
        found = [Target(layer)]
        attends = self._attention_module(layer) is not None
        found += [Target(layer, part) for part in ("attention", "mlp")
                  if (attends or part == "mlp") and components.find_part(self.layers[layer], part)]
        if attends and self.info.num_heads and components.find_output_projection(self.layers[layer]) is not None:
            found += [Target(layer, "head", head) for head in range(self.info.num_heads)]
        return found

    def _target_module(self, target: Target) -> nn.Module:
        if target.part in ("attention", "head") and self._attention_module(target.layer) is None:
            raise UsageError(f"layer {target.layer} of this {self.info.architecture} model has no attention "
                             "(a state-space or linear-recurrence layer), so no attention block or heads")
        module = components.hooked_module(self.layers[target.layer], target)
        if module is None:
            raise UsageError(f"layer {target.layer} of this {self.info.architecture} model has no {target.part} "
                             "block neuro-scan can find")
        return module

    def _component_hook(self, target: Target, intervention: Intervention):
        module = self._target_module(target)
        if target.part == "head":
            return module.register_forward_pre_hook(components.head_input_hook(target.head, self.info.num_heads,
                                                                               intervention))
        return module.register_forward_hook(components.block_output_hook(intervention))

    @torch.inference_mode()
    def target_means(self, batch: TokenBatch, targets: Sequence[Target]) -> dict[Target, tuple[torch.Tensor, int]]:
        real = batch.attention_mask.bool()
        sums: dict[Target, torch.Tensor] = {}

        def add(target: Target, values: torch.Tensor) -> None:
            total = values.reshape(*real.shape, -1)[real.to(values.device)].double().sum(dim=0)  # OPT's MLP: [B*T, d]
            sums[target] = sums[target] + total if target in sums else total

        def hook_for(target: Target):
            if target.part == "layer":
                return lambda _m, args, kwargs, output: add(target, self._architecture.stream(output)
                                                            - _hidden_arg(args, kwargs))
            if target.part == "head":
                return lambda _m, args: add(target, components.head_slice(args[0], target.head, self.info.num_heads))
            return lambda _m, _args, output: add(target, output[0] if isinstance(output, tuple) else output)

        # modules found before any hook is on: finding attention modules runs a forward of its own
        modules = {target: self._target_module(target) for target in targets if target.part != "layer"}
        with contextlib.ExitStack() as stack:
            for target in targets:
                if target.part == "layer":
                    handle = self.layers[target.layer].register_forward_hook(hook_for(target), with_kwargs=True)
                elif target.part == "head":
                    handle = modules[target].register_forward_pre_hook(hook_for(target))
                else:
                    handle = modules[target].register_forward_hook(hook_for(target))
                stack.enter_context(_hook(handle))
            self._base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        count = int(real.sum())
        return {target: (total, count) for target, total in sums.items()}

    # -- gradients (attribution) ---------------------------------------------------------------

    def gradient_pass(self, batch: TokenBatch, replacements: Mapping[Target, torch.Tensor | None],
                      objective: Callable[[torch.Tensor], torch.Tensor], *, drop_layers: bool = False,
                      attention: bool = False) -> GradientPass:
        from neuro_scan.backend import gradients

        return gradients.gradient_pass(self, batch, replacements, objective, drop_layers=drop_layers,
                                       attention=attention)

    def attention_after(self, batch: TokenBatch, layer: int, start_stream: torch.Tensor | None,
                        interventions: Mapping[Target, Intervention]) -> tuple[torch.Tensor, torch.Tensor]:
        from neuro_scan.backend import gradients

        return gradients.attention_after(self, batch, layer, start_stream, interventions)

    def unembed(self, hidden: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        with contextlib.nullcontext() if differentiable else torch.inference_mode():
            return self._architecture.logits(hidden.to(self._head_device))

    def unembedding_sha256(self) -> str:
        with _loaded_weights(self._lm_head):
            weight = self._lm_head.weight.detach().to("cpu", torch.bfloat16).contiguous()
        return hashlib.sha256(weight.view(torch.int16).numpy().tobytes()).hexdigest()


@contextlib.contextmanager
def _hook(handle) -> Iterator[None]:
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _replaced_forwards(layers: list[nn.Module], replacements: dict[int, Callable]) -> Iterator[None]:
    """Give some layers another ``forward`` for one run (nn.Module.__call__ looks up the
    instance attribute first), and always restore the forward they had afterwards (the class's
    own, or accelerate's wrapper around it where a device map placed the layer)."""
    previous = {index: layers[index].__dict__.get("forward") for index in replacements}
    try:
        for index, forward in replacements.items():
            layers[index].forward = forward
        yield
    finally:
        for index, forward in previous.items():
            if forward is None:
                layers[index].__dict__.pop("forward", None)
            else:
                layers[index].forward = forward


def execution_device(module: nn.Module, fallback: torch.device) -> torch.device:
    """Where a module computes: accelerate's execution device where a device map placed it or its
    parts (their weights may wait on the CPU or disk until they run), else where its weights are."""
    for part in module.modules():
        hook = getattr(part, "_hf_hook", None)
        for one in getattr(hook, "hooks", (hook,)):
            device = getattr(one, "execution_device", None)
            if device is not None:
                return torch.device(device)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return fallback


def _loaded_weights(module: nn.Module) -> contextlib.AbstractContextManager:
    """The module's weights in memory for the duration, where a device map offloaded them."""
    if all(tensor.device.type != "meta" for tensor in module.parameters()):
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)


def open_model(model: str, *, dtype: str = "auto", device: str = "auto", device_map: str | dict | None = None,
               max_memory: dict[int | str, int] | None = None, offload_folder: str | None = None) -> TransformersBackend:
    """``--model/--dtype/--device`` -> a ready backend (registered as ``transformers`` in
    :mod:`neuro_scan.backend`); ``device_map``/``max_memory``/``offload_folder``: see
    :func:`neuro_scan.backend.loading.load_model`."""
    from neuro_scan.backend import loading


    loading.check_device_map(device_map, device)
    source = loading.resolve_source(model)
    torch_device = loading.resolve_device(device)
    torch_dtype = loading.resolve_dtype(dtype, torch_device)
    loaded, tokenizer = loading.load_model(source, torch_dtype, torch_device, device_map=device_map,
                                           max_memory=max_memory, offload_folder=offload_folder)
    return TransformersBackend(loaded, tokenizer, source.display_name)
