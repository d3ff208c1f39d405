"""The logit lens against an independent computation, its answer/emergence semantics, and `logit-lens`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neuro_scan.analysis.lens import run_lens
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.cli import app
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from tiny_models import make_backend, tiny_model, tiny_tokenizer

PROBE = Probe(
    name="tiny",
    description="single- and multi-token answers, with and without choices",
    samples=(
        Sample("abc", "d"),
        Sample("hello wor", "ld"),
        Sample("1+1=", "2", choices=("1", "2", "3")),
        Sample("the cat", " sat"),
    ),
)


def _final_norm_and_unembed(model, model_type: str, hidden: torch.Tensor) -> torch.Tensor:
    """The logit lens written out in plain torch from the weights, with no neuro-scan code."""
    if model_type == "llama":
        norm = model.model.norm
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
    else:  # gpt2
        norm = model.transformer.ln_f
        hidden = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=norm.eps) * norm.weight + norm.bias
    return hidden @ model.lm_head.weight.T


def _direct(model, model_type: str, tokens: list[int]) -> list[torch.Tensor]:
    """Log-probabilities of the next token after ``tokens``, read at every layer 0..L-1, computed
    from the model's own ``output_hidden_states`` (the last layer: the model's own logits)."""
    with torch.no_grad():
        output = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    layers = model.config.num_hidden_layers
    read = [_final_norm_and_unembed(model, model_type, output.hidden_states[i + 1][0, -1]) for i in range(layers - 1)]
    return [torch.log_softmax(logits.double(), -1) for logits in [*read, output.logits[0, -1]]]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_kl_entropy_and_answer_probability_equal_a_direct_computation(model_type):
    model = tiny_model(model_type)
    backend = TransformersBackend(model, tiny_tokenizer(), model_type)
    lens = run_lens(Engine(backend, PROBE, batch_size=2), top_k=3)
    for index, sample in enumerate(PROBE.samples):
        prompt = backend.tokenize(sample.prompt, add_special_tokens=True)
        answer = backend.tokenize(sample.answer, add_special_tokens=False)
        # one direct read per answer token, each at the position that predicts it
        reads = [_direct(model, model_type, prompt + answer[:offset]) for offset in range(len(answer))]
        final = reads[0][-1]
        for layer in range(backend.num_layers):
            first = reads[0][layer]
            kl_bits = float((final.exp() * (final - first)).sum()) / math.log(2)
            entropy_bits = float(-(first.exp() * first).sum()) / math.log(2)
            answer_prob = math.exp(sum(float(read[layer][token]) for read, token in zip(reads, answer)))
            worst_rank = max(int((read[layer] > read[layer][token]).sum()) for read, token in zip(reads, answer))
            got = lens.layers[layer]
            assert got.kl_to_final_bits[index] == pytest.approx(kl_bits, abs=1e-4)
            assert got.entropy_bits[index] == pytest.approx(entropy_bits, abs=1e-4)
            assert got.answer_prob[index] == pytest.approx(answer_prob, rel=1e-4, abs=1e-7)
            assert got.answer_rank[index] == worst_rank
            top = torch.topk(first.exp(), 3)
            assert got.top_tokens[index] == [backend.decode_token(int(t)) for t in top.indices]
            np.testing.assert_allclose(got.top_probs[index], top.values.numpy(), atol=1e-5)
    assert np.all(lens.layers[-1].kl_to_final_bits < 1e-6)


def test_emergence_is_the_first_layer_from_which_the_flag_holds_to_the_end():
    backend = make_backend("llama")
    lens = run_lens(Engine(backend, PROBE), emergence_prob=0.02)
    ranks = np.stack([layer.answer_rank for layer in lens.layers], axis=1)
    probs = np.stack([layer.answer_prob for layer in lens.layers], axis=1)
    for flags, emergence in ((ranks == 0, lens.emergence), (probs >= 0.02, lens.prob_emergence)):
        for row, layer in zip(flags, emergence):
            expected = next((i for i in range(len(row)) if row[i:].all()), None)
            assert layer == expected
    share = [np.mean([e is not None and e <= layer for e in lens.emergence]) for layer in range(backend.num_layers)]
    assert lens.probe_emergence == next((i for i, s in enumerate(share) if s >= 0.5), None)


def test_identity_translator_reads_the_same_as_the_logit_lens():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE)
    plain = run_lens(engine)
    translated = run_lens(engine, translator=lambda _layer, hidden: hidden)
    assert (plain.lens, translated.lens) == ("logit", "tuned")
    for a, b in zip(plain.layers, translated.layers):
        np.testing.assert_array_equal(a.answer_prob, b.answer_prob)
        np.testing.assert_array_equal(a.kl_to_final_bits, b.kl_to_final_bits)


def test_logit_lens_command_writes_its_reports_and_honours_top_tokens(tiny_model_folder, tmp_path):
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"name": "tiny", "samples": [{"prompt": s.prompt, "answer": s.answer}
                                                             for s in PROBE.samples]}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["logit-lens", "--model", str(tiny_model_folder), "--custom-probe", str(probe),
                                      "--top-tokens", "7", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("logit_lens.json", "logit_lens.html", "entropy_profile.html", "plotly.min.js"):
        assert (out / name).is_file(), name
    report = json.loads((out / "logit_lens.json").read_text())
    assert report["command"] == "logit-lens" and report["logit_lens"]["lens"] == "logit"
    assert report["logit_lens"]["tuned_lens"] is None and report["tuned_lens_file"] is None
    trajectory = report["logit_lens_trajectory"]
    assert len(trajectory) == len(PROBE.samples) and len(trajectory[0]) == 4
    assert all(len(cell["top_k"]) == 7 for sample in trajectory for cell in sample)
    for key in ("layer_idx", "top_token", "top_token_prob", "target_token_prob", "entropy"):  # the reference's keys
        assert key in trajectory[0][0]
    summary = report["logit_lens"]
    assert len(summary["mean_entropy_bits_ci"]) == 4
    for low_high, mean in zip(summary["mean_entropy_bits_ci"], summary["mean_entropy_bits"]):
        assert low_high[0] <= mean <= low_high[1]
    assert "cdn.plot.ly" not in (out / "entropy_profile.html").read_text()


def test_bad_top_k_is_a_usage_error(tiny_model_folder, tmp_path):
    result = CliRunner().invoke(app, ["logit-lens", "--model", str(tiny_model_folder), "--top-k", "0",
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--top-k" in result.output
