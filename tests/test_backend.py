"""Backend mechanics on tiny random models of every supported architecture."""

from __future__ import annotations

import copy

import pytest
import torch

from neuro_scan.backend.transformers import TransformersBackend
from tiny_models import make_backend, tiny_tokenizer

# where each model keeps its decoder layers, written out here independently of the backend's discovery
LAYER_LISTS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers"}
TOL = 1e-5
SEQUENCES = [[5, 17, 33, 8, 61, 12, 40], [9, 22, 70], [44, 45, 46, 47, 48]]


def real_positions(batch, row: int) -> slice:
    return slice(0, int(batch.lengths[row]))


def delete_layer(model, model_type: str, index: int):
    """An independent model with decoder layer ``index`` really removed from its module list."""
    pruned = copy.deepcopy(model)
    layers_path = LAYER_LISTS.get(model_type, "model.layers")
    parent = pruned
    for part in layers_path.split("."):
        parent = getattr(parent, part)
    del parent[index]
    pruned.config.num_hidden_layers -= 1
    if getattr(pruned.config, "layer_types", None):
        pruned.config.layer_types = [t for i, t in enumerate(pruned.config.layer_types) if i != index]
    return pruned


def test_lens_at_last_layer_equals_model_logits(tiny_backend):
    backend = tiny_backend
    batch = backend.make_batch(SEQUENCES)
    final = backend.run(batch)[0]
    logits = backend.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for row in range(batch.size):
        real = real_positions(batch, row)
        assert torch.allclose(backend.unembed(final[row, real]), logits[row, real], atol=TOL, rtol=0)


@pytest.mark.parametrize("skipped", [0, 2, 3])
def test_hook_skip_equals_deleting_the_layer(tiny_backend, skipped):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    skipped_logits = backend.unembed(backend.run(batch, skip={skipped: None})[0])
    pruned = delete_layer(backend.model, model_type, skipped)
    expected = pruned(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    for row in range(batch.size):
        real = real_positions(batch, row)
        assert torch.allclose(skipped_logits[row, real], expected[row, real], atol=TOL, rtol=0)
    # and skipping changes something (the test could otherwise pass vacuously)
    baseline = backend.unembed(backend.run(batch)[0])
    assert (baseline - skipped_logits).abs().max() > 1e-3


def test_resume_equals_full_run_with_same_skips(tiny_backend):
    backend = tiny_backend
    batch = backend.make_batch(SEQUENCES)
    baseline = backend.run(batch, capture=True)
    assert len(baseline) == backend.num_layers + 1 and all(s is not None for s in baseline)
    for start in range(1, backend.num_layers + 1):
        resumed = backend.run(batch, start_layer=start, start_stream=baseline[start], capture=True)
        for k in range(start, backend.num_layers + 1):
            assert (resumed[k] - baseline[k]).abs().max() <= TOL
    # resume + skip == full run + skip
    skips = {2: None}
    full_skipped = backend.run(batch, skip=skips)[0]
    resumed_skipped = backend.run(batch, skip=skips, start_layer=1, start_stream=baseline[1])[0]
    assert (full_skipped - resumed_skipped).abs().max() <= TOL


def test_padded_batch_equals_one_at_a_time(tiny_backend):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    together = backend.run(batch, capture=True)
    for row, seq in enumerate(SEQUENCES):
        alone = backend.run(backend.make_batch([seq]), capture=True)
        for boundary in range(backend.num_layers + 1):
            diff = together[boundary][row, : len(seq)] - alone[boundary][0]
            assert diff.abs().max() <= TOL, (model_type, row, boundary)


@pytest.mark.parametrize("tiny_backend", ["llama", "gpt2"], indirect=True)
def test_row_skips_equal_separate_runs(tiny_backend):
    backend = tiny_backend
    batch = backend.make_batch(SEQUENCES)
    stacked = batch.repeat(2)
    rows = torch.tensor([False] * batch.size + [True] * batch.size)
    together = backend.run(stacked, skip={1: rows})[0]
    assert (together[: batch.size] - backend.run(batch)[0]).abs().max() <= TOL
    assert (together[batch.size :] - backend.run(batch, skip={1: None})[0]).abs().max() <= TOL


def test_layer_forwards_are_restored_after_a_run():
    backend = make_backend("llama")
    batch = backend.make_batch(SEQUENCES)
    before = backend.run(batch)[0]
    backend.run(batch, skip={0: None, 1: None})
    assert all("forward" not in layer.__dict__ for layer in backend.layers)
    assert torch.equal(backend.run(batch)[0], before)


def test_unsupported_architecture_is_a_usage_error():
    from transformers import AutoConfig, AutoModelForCausalLM

    from neuro_scan.errors import UsageError

    config = AutoConfig.for_model("bert", vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UsageError, match="'bert' is an encoder-only"):
        TransformersBackend(model, tiny_tokenizer(), "tiny-bert")


def duplicate_block(model, model_type: str, first: int, stop: int):
    """An independent model whose module list really holds layers first..stop-1 twice."""
    from torch import nn

    grown = copy.deepcopy(model)
    layers_path = LAYER_LISTS.get(model_type, "model.layers")
    *parent_path, name = layers_path.split(".")
    parent = grown
    for part in parent_path:
        parent = getattr(parent, part)
    layers = list(getattr(parent, name))
    order = list(range(stop)) + list(range(first, len(layers)))
    # the second pass gets copies (same weights): a module may appear only once in a model's layer list
    setattr(parent, name, nn.ModuleList([copy.deepcopy(layers[i]) if n >= stop and i < stop else layers[i]
                                         for n, i in enumerate(order)]))
    grown.config.num_hidden_layers = len(order)
    if getattr(grown.config, "layer_types", None):
        grown.config.layer_types = [model.config.layer_types[i] for i in order]
    return grown


@pytest.mark.parametrize("block", [(1, 3), (0, 4), (2, 3)])
def test_repeated_block_equals_model_with_duplicated_layers(tiny_backend, block):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    repeated = backend.unembed(backend.run(batch, repeat=block)[0])
    grown = duplicate_block(backend.model, model_type, *block)
    expected = grown(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    for row in range(batch.size):
        real = real_positions(batch, row)
        assert torch.allclose(repeated[row, real], expected[row, real], atol=TOL, rtol=0)
    assert (repeated - backend.unembed(backend.run(batch)[0])).abs().max() > 1e-3


@pytest.mark.parametrize("tiny_backend", ["llama", "gemma3_text"], indirect=True)
def test_repeated_block_resumed_from_cache_equals_full(tiny_backend):
    backend = tiny_backend
    batch = backend.make_batch(SEQUENCES)
    baseline = backend.run(batch, capture=True)
    full = backend.run(batch, repeat=(1, 3))[0]
    resumed = backend.run(batch, repeat=(1, 3), start_layer=3, start_stream=baseline[3])[0]
    assert (full - resumed).abs().max() <= TOL
