"""Every model type in transformers' causal-LM mapping, as a tiny random model, through the real backend.

For each type we build a 4-layer model from its config class (no download) and check the rules
everything in neuro-scan rests on: skipping a layer equals deleting it (one layer of each kind:
attention, state-space, mixture-of-experts...), resuming from a cached stream equals the full run,
a padded batch equals its rows run one at a time, the lens at the last layer equals the model's
logits, and each layer's attention weights are either captured (probabilities over the real keys)
or reported unavailable. The outcome of every type is a row of docs/architectures.md; the test
fails when the table and the code disagree. Regenerate the table with

    python tests/test_architectures.py
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from neuro_scan.backend.architecture import EXCEPTIONS, exception, refusal
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.errors import UsageError
from tiny_models import tiny_any_model, tiny_config, tiny_tokenizer

TABLE = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
MODEL_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
SEQUENCES = [[5, 17, 33, 8, 61, 12, 40], [9, 22, 70], [44, 45, 46, 47, 48]]
TOL = 1e-4  # relative to the largest logit: float32, same ops in a different grouping

# model_type -> why no tiny model of it can be built here (checked: building it really fails)
NOT_BUILDABLE: dict[str, str] = {
    "gemma3n": "its vision tower (timm) needs the pillow package, which is not installed here; its text model "
               "is the gemma3n_text row",
}


@dataclass(frozen=True)
class Row:
    model_type: str
    status: str  # "verified", "refused" or "not built"
    detail: str

    def line(self) -> str:
        return f"| `{self.model_type}` | {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[self.model_type]} | {self.status} | {self.detail} |"


def examine(model_type: str) -> Row:
    """Build a tiny model of this type and check it, or say why it is refused or cannot be built."""
    if model_type in NOT_BUILDABLE:
        return Row(model_type, "not built", NOT_BUILDABLE[model_type])
    if model_type in EXCEPTIONS:
        return Row(model_type, "refused", exception(model_type))
    why = refusal(tiny_config(model_type))
    if why:
        return Row(model_type, "refused", why)
    model = tiny_any_model(model_type)
    try:
        backend = TransformersBackend(model, tiny_tokenizer(), model_type)
    except UsageError as error:
        return Row(model_type, "refused", str(error).removeprefix("--model: "))
    return Row(model_type, "verified", check_backend(backend))


# -- the checks ---------------------------------------------------------------------------------


@torch.no_grad()
def logits_of(model, batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits.float()


def assert_close_on_real_tokens(ours: torch.Tensor, expected: torch.Tensor, batch, what: str) -> None:
    scale = max(1.0, float(expected.abs().max()))
    for row in range(batch.size):
        real = slice(0, int(batch.lengths[row]))
        diff = float((ours[row, real] - expected[row, real]).abs().max())
        assert diff <= TOL * scale, f"{what}: row {row} differs by {diff:.3g}"


def delete_layer(model, layers_path: str, index: int):
    """An independent model with decoder layer ``index`` removed from its module list, from its
    config's per-layer lists (layer types; lists of layer indices are renumbered) and from any
    per-layer input embedding."""
    pruned = copy.deepcopy(model)
    layers = pruned.get_submodule(layers_path)
    count = len(layers)
    del layers[index]
    config = pruned.config.get_text_config(decoder=True)
    derived = {name: [v for i, v in enumerate(getattr(config, name)) if i != index]
               for name, attribute in vars(type(config)).items()
               if isinstance(attribute, property) and isinstance(getattr(config, name, None), list)
               and len(getattr(config, name)) == count}
    renumbered: list[tuple[list, list]] = []
    for key, value in list(vars(config).items()):
        if not isinstance(value, list):
            continue
        if key.endswith(("_indices", "_ids", "_layers")) and all(isinstance(v, int) for v in value):
            renumbered.append((value, [v - (v > index) for v in value if v != index]))
            setattr(config, key, renumbered[-1][1])
        elif len(value) == count:
            setattr(config, key, [v for i, v in enumerate(value) if i != index])
    if derived:  # per-layer lists the config computes (from a period, say): fixed to the pruned lists
        config.__class__ = type(type(config).__name__, (type(config),), derived)
    for name in ("num_hidden_layers", "num_layers"):  # (Longcat counts two sub-layers per layer)
        if getattr(config, name, None) == count:
            setattr(config, name, count - 1)
    for module in pruned.modules():
        if isinstance(getattr(module, "layer_dic", None), dict):  # Zamba2's shared block: adapters by layer number
            module.layer_dic = {k - (k > index): v for k, v in module.layer_dic.items() if k != index}
        for name, value in list(vars(module).items()):  # copies of those index lists (Mllama's decoder)
            for old, new in renumbered:
                if isinstance(value, list) and value == old:
                    setattr(module, name, new)
    width = getattr(config, "hidden_size_per_layer_input", 0)
    if width:  # per-layer input embeddings (Gemma 3n/4): drop the deleted layer's slice
        keep = torch.cat([torch.arange(i * width, (i + 1) * width) for i in range(count) if i != index])
        for name, module in pruned.named_modules():
            if name.endswith("embed_tokens_per_layer"):
                module.weight = torch.nn.Parameter(module.weight[:, keep])
                module.embedding_dim = len(keep)
            elif name.endswith("per_layer_model_projection"):
                module.weight = torch.nn.Parameter(module.weight[keep])
                module.out_features = len(keep)
    return pruned


def check_backend(backend: TransformersBackend) -> str:
    """All checks on one backend; returns what the table says about its layers."""
    model, layers, num_layers = backend.model, backend.layers, backend.num_layers
    batch = backend.make_batch(SEQUENCES)

    baseline = backend.run(batch, capture=True)
    assert len(baseline) == num_layers + 1 and all(s is not None for s in baseline)
    assert_close_on_real_tokens(backend.unembed(baseline[-1]), logits_of(model, batch), batch, "lens at the last layer")

    kinds = {}  # a layer of each kind: its type in the config, its class and its children's classes
    layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or [None] * num_layers
    for index, layer in enumerate(layers):
        kind = (layer_types[index], type(layer).__name__, *(type(child).__name__ for child in layer.children()))
        kinds.setdefault(kind, index)
    running = [i for i in range(num_layers + len(backend._architecture.idle)) if i not in backend._architecture.idle]
    for index in kinds.values():
        skipped = backend.unembed(backend.run(batch, skip={index: None})[0])
        pruned = delete_layer(model, backend._architecture.layers_path, running[index])
        assert_close_on_real_tokens(skipped, logits_of(pruned, batch), batch, f"skip layer {index} vs deleting it")

    for start in range(1, num_layers + 1):
        resumed = backend.run(batch, start_layer=start, start_stream=baseline[start], capture=True)
        for boundary in range(start, num_layers + 1):
            assert_close_on_real_tokens(resumed[boundary], baseline[boundary], batch, f"resume at {start}")

    for row, sequence in enumerate(SEQUENCES):
        alone = backend.run(backend.make_batch([sequence]), capture=True)
        for boundary in range(num_layers + 1):
            diff = float((baseline[boundary][row, : len(sequence)] - alone[boundary][0]).abs().max())
            assert diff <= TOL * max(1.0, float(alone[boundary].abs().max())), f"padded row {row} at boundary {boundary}"

    with_attention = check_attention(backend, batch)
    classes = ", ".join(dict.fromkeys(type(layer).__name__ for layer in layers))
    idle = backend._architecture.idle
    left_out = f" ({len(idle)} layer(s) that do not run on text left out)" if idle else ""
    return (f"{classes}: {len(kinds)} kind(s) of layer{left_out}; "
            f"attention weights on {with_attention}/{num_layers} layers")


def check_attention(backend: TransformersBackend, batch) -> int:
    """Each layer's attention weights put nothing on padding and at most 1 on the real keys (below 1
    where the model has attention sinks), or the layer has no attention and is reported as None."""
    lengths = [int(n) for n in batch.lengths]

    def reduce(layer: int, weights: torch.Tensor) -> int:
        assert weights.dim() == 4 and weights.shape[0] == batch.size and weights.shape[-1] == batch.input_ids.shape[1]
        for row, n in enumerate(lengths):
            real = weights[row, :, :n]
            assert (real[..., n:] == 0).all(), f"layer {layer} attends to padding"
            sums = real.sum(dim=-1)
            assert (sums > 0).all() and (sums <= 1 + 1e-4).all(), f"layer {layer} weights do not sum to at most 1"
        return layer

    captured = backend.reduce_attention(batch, reduce)
    expected = [i if backend._attention_module(i) is not None else None for i in range(backend.num_layers)]
    assert captured == expected
    return sum(c is not None for c in captured)


class RunningMeanConfig(PretrainedConfig):
    model_type = "running_mean_lm"

    def __init__(self, vocab_size=128, hidden_size=32, num_hidden_layers=3, logit_scale=0.5, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.logit_scale = logit_scale
        super().__init__(**kwargs)


class RunningMeanBlock(nn.Module):
    """Mixes tokens by a causal running mean: no attention."""

    def __init__(self, width: int):
        super().__init__()
        self.norm, self.mix = nn.LayerNorm(width), nn.Linear(width, width)

    def forward(self, hidden_states, attention_mask=None):
        x = self.norm(hidden_states)
        running = x.cumsum(dim=1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
        return hidden_states + torch.tanh(self.mix(running))


class RunningMeanTrunk(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(RunningMeanBlock(config.hidden_size) for _ in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        hidden = self.wte(input_ids)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=attention_mask)
        return BaseModelOutput(last_hidden_state=self.ln_out(hidden))


class RunningMeanLM(PreTrainedModel):
    """A causal LM no table knows: names no transformers model uses (trunk.blocks, ln_out, unembed) and
    a logit scale in its config; ``hidden_factor`` scales the logits by a factor the config does not name."""

    config_class = RunningMeanConfig

    def __init__(self, config, hidden_factor: float = 1.0):
        super().__init__(config)
        self.trunk = RunningMeanTrunk(config)
        self.unembed = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.hidden_factor = hidden_factor

    def get_decoder(self):
        return self.trunk

    def get_input_embeddings(self):
        return self.trunk.wte

    def get_output_embeddings(self):
        return self.unembed

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        hidden = self.trunk(input_ids, attention_mask).last_hidden_state
        return CausalLMOutput(logits=self.unembed(hidden) * self.config.logit_scale * self.hidden_factor)


def test_a_model_type_no_table_knows_works_when_discovery_finds_its_parts():
    torch.manual_seed(0)
    backend = TransformersBackend(RunningMeanLM(RunningMeanConfig()).eval(), tiny_tokenizer(), "running-mean")
    assert backend._architecture.layers_path == "trunk.blocks" and backend.num_layers == 3
    assert check_backend(backend).endswith("attention weights on 0/3 layers")


def test_logits_discovery_cannot_reproduce_are_refused_not_misread():
    torch.manual_seed(0)
    model = RunningMeanLM(RunningMeanConfig(), hidden_factor=3.0).eval()
    with pytest.raises(UsageError, match="logits of this running_mean_lm model are not reproduced"):
        TransformersBackend(model, tiny_tokenizer(), "running-mean")


def test_attention_entropy_reports_layers_without_attention_as_unavailable():
    """A hybrid model (Jamba: state-space layers between attention layers): the attention analysis
    runs, gives entropies for the attention layers and NaN (null in the report) for the others."""
    from neuro_scan.analysis.attention import run_attention
    from neuro_scan.engine import Engine
    from neuro_scan.probes import Probe, Sample

    backend = TransformersBackend(tiny_any_model("jamba"), tiny_tokenizer(), "jamba")
    result = run_attention(Engine(backend, Probe("tiny", "", (Sample("abcdefg", "h"), Sample("xyz", "w")))))
    with_attention = [backend._attention_module(i) is not None for i in range(backend.num_layers)]
    assert any(with_attention) and not all(with_attention)
    for layer, present in enumerate(with_attention):
        assert bool(torch.isfinite(torch.tensor(result.answer_bits[layer])).all()) == present
        assert bool(torch.isnan(torch.tensor(result.answer_bits[layer])).all()) != present


def test_layers_without_attention_have_no_attention_or_head_targets():
    from neuro_scan.backend.base import Intervention, Target

    backend = TransformersBackend(tiny_any_model("jamba"), tiny_tokenizer(), "jamba")
    batch = backend.make_batch(SEQUENCES)
    for layer in range(backend.num_layers):
        parts = {target.part for target in backend.targets_in(layer)}
        if backend._attention_module(layer) is None:
            assert parts <= {"layer", "mlp"}
            with pytest.raises(UsageError, match=f"layer {layer} of this jamba model has no attention"):
                backend.run(batch, interventions={Target(layer, "head", 0): Intervention()})
        else:
            assert {"attention", "head"} <= parts


@pytest.mark.parametrize("model_type, config, why", [
    ("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
     "'bert' is an encoder-only"),
    ("t5", dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4), "'t5' is an encoder-decoder model"),
])
def test_encoder_models_are_refused_in_one_line_before_loading(tmp_path, model_type, config, why):
    """A bert or t5 folder given to --model: exit code 2 and one line naming the model type and why."""
    from transformers import AutoConfig, AutoModel
    from typer.testing import CliRunner

    from neuro_scan.cli import app

    AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=96, **config)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["map", "--model", str(tmp_path), "--probe", "arith"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model: ") and why in lines[0]


# -- the table ----------------------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    verified = sum(row.status == "verified" for row in rows)
    counts = {status: sum(row.status == status for row in rows) for status in ("verified", "refused", "not built")}
    lines = [
        "# Architectures",
        "",
        "Generated by `python tests/test_architectures.py`; `tests/test_architectures.py` fails when this",
        "table and the code disagree. Every model type that transformers maps to a causal-LM class is",
        "built as a tiny random model (4 layers, width 64; no download) and run through neuro-scan's",
        "backend. **verified**: skipping a layer equals deleting it (one layer of each kind), resuming",
        "from a cached stream equals the full run, a padded batch equals its rows one at a time, the",
        "lens at the last layer equals the model's logits, and attention weights are captured on every",
        "layer that has attention (the others are reported as having none). **refused**: neuro-scan",
        "stops with this reason. **not built**: no tiny model of it can be made here.",
        "",
        f"transformers {transformers.__version__}: {len(rows)} model types, {verified} verified, "
        f"{counts['refused']} refused, {counts['not built']} not built.",
        "",
        "| model type | causal-LM class | status | layers / reason |",
        "|---|---|---|---|",
        *(row.line() for row in rows),
        "",
    ]
    return "\n".join(lines)


def recorded_rows() -> dict[str, str]:
    if not TABLE.is_file():
        return {}
    rows = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (two threads spin on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_table_covers_this_transformers_version():
    text = TABLE.read_text()
    assert f"transformers {transformers.__version__}:" in text, "regenerate: python tests/test_architectures.py"
    assert sorted(recorded_rows()) == MODEL_TYPES, "regenerate: python tests/test_architectures.py"


def test_readme_states_the_verified_count():
    verified = sum(" | verified | " in line for line in recorded_rows().values())
    version = ".".join(transformers.__version__.split(".")[:2])
    readme = " ".join((TABLE.parents[1] / "README.md").read_text().split())
    assert f"{verified} of the {len(MODEL_TYPES)} causal-LM model types in transformers {version}" in readme


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_type_matches_the_table(model_type):
    row = examine(model_type)
    assert recorded_rows().get(model_type) == row.line(), "regenerate: python tests/test_architectures.py"


if __name__ == "__main__":
    torch.set_num_threads(1)
    rows = []
    for model_type in MODEL_TYPES:
        row = examine(model_type)
        print(row.line(), file=sys.stderr)
        rows.append(row)
    TABLE.write_text(render(rows))
