"""The tuned lens: it starts at the logit lens, trains only itself, proves its gain on held-out
text, and refuses models it does not fit; the calibration corpus; `calibrate` and `--tuned-lens`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from typer.testing import CliRunner

from neuro_scan.analysis.tuned_lens import (TrainSettings, TunedLens, calibrate, check_fits, evaluate_heldout,
                                            lens_file_bytes, load_lens, read_lens_record, split_corpus)
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.cli import app
from neuro_scan.corpus import Corpus, builtin_corpus, load_corpus_file
from neuro_scan.errors import UsageError
from neuro_scan.report import write_lens_file
from tiny_models import CONFIGS, tiny_model, tiny_tokenizer

TINY = TrainSettings(steps=3, tokens_per_step=128, heldout_tokens=256)
TEXT = builtin_corpus().documents[0][:6000]


def tiny_backend(seed: int = 0, **config) -> TransformersBackend:
    if config:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **{**CONFIGS["llama"], **config}))
    else:
        model = tiny_model("llama", seed=seed)
    return TransformersBackend(model.eval(), tiny_tokenizer(), f"tiny-llama-{seed}-{config}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lens trained on a tiny llama, and its file."""
    backend = tiny_backend()
    calibration = calibrate(backend, Corpus("test", (TEXT,)), TINY)
    path = write_lens_file(tmp_path_factory.mktemp("lens") / "lens.safetensors",
                           lens_file_bytes(calibration.lens, calibration.record))
    return backend, calibration, path


# ------------------------------------------------------------------------------ the lens itself


@pytest.mark.parametrize("rank", [None, 4])
def test_an_untrained_lens_is_exactly_the_logit_lens(rank):
    backend = tiny_backend()
    lens = TunedLens(backend.num_layers, backend.info.hidden_size, rank)
    hidden = torch.randn(5, backend.info.hidden_size)
    for layer in range(backend.num_layers):
        assert torch.equal(lens(layer, hidden), hidden)
    chunks = split_corpus(Corpus("test", (TEXT,)), backend, TINY)
    held = evaluate_heldout(backend, lens, chunks.heldout)
    assert held.tuned_kl_bits == held.logit_kl_bits
    assert held.logit_kl_bits[-1] == 0.0 and min(held.logit_kl_bits[:-1]) > 0


def test_training_leaves_every_model_parameter_without_gradient():
    model = tiny_model("llama")
    assert all(p.requires_grad for p in model.parameters())  # as built: the backend must freeze it
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    backend = TransformersBackend(model, tiny_tokenizer(), "tiny")
    calibration = calibrate(backend, Corpus("test", (TEXT,)), TINY)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())
    assert float(calibration.lens.bias.detach().abs().sum()) > 0  # while the lens did learn


def test_the_tuned_lens_beats_the_logit_lens_on_held_out_text(trained):
    _backend, calibration, _path = trained
    held = calibration.record.heldout
    assert held.tokens == TINY.heldout_tokens
    assert all(saved > 0 for saved in held.saved_bits[:-1])
    assert held.saved_bits[-1] == 0.0


def test_held_out_text_is_never_trained_on():
    backend = tiny_backend()
    chunks = split_corpus(Corpus("test", (TEXT, TEXT[:3000])), backend, TINY)
    first = backend.tokenize(TEXT, add_special_tokens=True)
    cut = len(first) - -(-len(first) // 10)
    assert chunks.train[0] == first[:TINY.context_tokens]
    assert chunks.heldout[0] == first[cut : cut + TINY.context_tokens]
    assert sum(map(len, chunks.heldout)) == TINY.heldout_tokens
    training = {tuple(c) for c in chunks.train}
    assert not any(tuple(c) in training for c in chunks.heldout)


def test_low_rank_translators_are_smaller(trained):
    backend, full, _ = trained
    low = calibrate(backend, Corpus("test", (TEXT,)), TrainSettings(**{**TINY.__dict__, "rank": 4}))
    assert low.record.rank == 4 and set(low.lens.tensors()) == {"bias", "up", "down"}
    assert len(lens_file_bytes(low.lens, low.record)) < len(lens_file_bytes(full.lens, full.record))
    assert all(s > 0 for s in low.record.heldout.saved_bits[:-1])
    with pytest.raises(UsageError, match="--rank: 32 is not below the hidden size 32"):
        calibrate(backend, Corpus("test", (TEXT,)), TrainSettings(**{**TINY.__dict__, "rank": 32}))


# ---------------------------------------------------------------------------------- lens files


def test_the_lens_file_carries_its_record_and_reloads_exactly(trained):
    backend, calibration, path = trained
    record = read_lens_record(path)
    assert record == calibration.record
    assert (record.model_id, record.hidden_size, record.num_layers) == (backend.info.model_id, 32, 4)
    assert record.unembedding_sha256 == backend.unembedding_sha256()
    assert record.settings["steps"] == 3 and record.settings["tokens_per_step"] == 128
    assert record.tool_version and record.training["tokens_seen"] == 3 * 128
    lens, _ = load_lens(path, backend)
    hidden = torch.randn(3, 32)
    for layer in range(4):
        assert torch.equal(lens(layer, hidden), calibration.lens(layer, hidden).detach())


@pytest.mark.parametrize("other, fragment", [
    ({"hidden_size": 48}, "hidden size 32, and"),
    ({"num_hidden_layers": 3}, "layer count 4, and"),
    ({"seed": 1}, "unembedding matrix differs"),
])
def test_a_lens_refuses_a_model_it_does_not_fit(trained, other, fragment):
    _backend, _calibration, path = trained
    backend = tiny_backend(**other) if "seed" not in other else tiny_backend(seed=other["seed"])
    with pytest.raises(UsageError, match="does not fit this model") as error:
        load_lens(path, backend)
    assert fragment in str(error.value)


def test_the_fingerprint_ignores_the_loading_dtype():
    backend = tiny_backend()
    half = TransformersBackend(tiny_model("llama").to(torch.bfloat16), tiny_tokenizer(), "bf16")
    assert backend.unembedding_sha256() == half.unembedding_sha256()


@pytest.mark.parametrize("content, fragment", [
    (None, "no such file"),
    (b"not a safetensors file at all", "not a safetensors file"),
    ("plain", "not a neuro-scan tuned-lens file"),
])
def test_a_file_that_is_not_a_lens_is_refused(tmp_path, content, fragment):
    from safetensors.torch import save_file

    path = tmp_path / "lens.safetensors"
    if content == "plain":
        save_file({"bias": torch.zeros(3, 32)}, str(path))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=fragment):
        read_lens_record(path)


# -------------------------------------------------------------------------------------- corpus


def test_the_builtin_corpus_is_a_few_hundred_kb_of_english():
    corpus = builtin_corpus()
    assert len(corpus.documents) == 2 and 200_000 < corpus.characters < 400_000
    assert "Alice" in corpus.documents[0] and "ROSALIND" in corpus.documents[1]


def test_corpus_files(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("One document.\nTwo lines.")
    assert load_corpus_file(text).documents == ("One document.\nTwo lines.",)
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"text": "first"}\n\n"second"\n{"text": "third", "id": 3}\n')
    assert load_corpus_file(lines).documents == ("first", "second", "third")


@pytest.mark.parametrize("name, content, fragment", [
    ("missing.txt", None, "no such file"),
    ("c.csv", "a,b", "must be a .txt file"),
    ("empty.txt", "  \n", "holds no text"),
    ("bad.jsonl", '{"text": "ok"}\n{oops', "line 2 is not valid JSON"),
    ("nofield.jsonl", '{"body": "x"}', "line 1 must be a JSON string or an object with a string field 'text'"),
    ("latin1.txt", b"caf\xe9", "not UTF-8"),
])
def test_bad_corpus_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=f"--corpus: .*{fragment}"):
        load_corpus_file(path)


def test_a_corpus_too_short_to_split_is_refused():
    with pytest.raises(UsageError, match="too short"):
        split_corpus(Corpus("tiny", ("a",)), tiny_backend(), TINY)


# ---------------------------------------------------------------------------------------- CLI


def test_calibrate_then_read_probes_through_the_lens(tiny_model_folder, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    lens_path = tmp_path / "lenses" / "tiny.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", "--model", str(tiny_model_folder), "--corpus", str(corpus), "--steps", "2",
                                 "--tokens-per-step", "128", "--heldout-tokens", "128", "--output", str(lens_path)])
    assert result.exit_code == 0, result.output
    assert lens_path.is_file() and "tuned lens KL" in result.output and "MiB" in result.output
    record = read_lens_record(lens_path)
    assert record.corpus["name"] == str(corpus) and record.heldout.tokens == 128

    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"name": "tiny", "samples": [{"prompt": "abc", "answer": "d"},
                                                             {"prompt": "hello wor", "answer": "ld"}]}))
    for command, report_name in (("logit-lens", "logit_lens.json"), ("map", "report.json")):
        out = tmp_path / command
        result = runner.invoke(app, [command, "--model", str(tiny_model_folder), "--custom-probe", str(probe),
                                     "--tuned-lens", str(lens_path), "--output", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads((out / report_name).read_text())
        assert report["logit_lens"]["lens"] == "tuned" and report["tuned_lens_file"] == str(lens_path)
        assert report["logit_lens"]["tuned_lens"]["unembedding_sha256"] == record.unembedding_sha256


@pytest.mark.parametrize("args, fragments", [
    (["calibrate", "--corpus", "{tmp}/missing.txt"], ["--corpus", "no such file"]),
    (["calibrate", "--corpus", "{tmp}/bad.jsonl"], ["--corpus", "line 1 is not valid JSON"]),
    (["calibrate", "--output", "{tmp}/lens.bin"], ["--output", ".safetensors"]),
    (["calibrate", "--steps", "0"], ["--steps", ">= 1"]),
    (["calibrate", "--lr", "-1"], ["--lr", "> 0"]),
    (["calibrate", "--rank", "0"], ["--rank", ">= 1"]),
    (["logit-lens", "--tuned-lens", "{tmp}/missing.safetensors"], ["--tuned-lens", "no such file"]),
    (["map", "--tuned-lens", "{tmp}/bad.jsonl"], ["--tuned-lens", "not a safetensors file"]),
])
def test_bad_input_is_refused_before_the_model_is_loaded(tiny_model_folder, tmp_path, no_model_loading,
                                                         args, fragments):
    (tmp_path / "bad.jsonl").write_text("{oops")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, [*args, "--model", str(tiny_model_folder)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


def test_a_lens_for_another_model_is_refused_by_the_cli(trained, tiny_model_folder, tmp_path):
    _backend, _calibration, path = trained  # trained on tiny_model("llama", seed=0): same weights as the folder's
    other = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    result = CliRunner().invoke(app, ["logit-lens", "--model", str(other), "--tuned-lens", str(path),
                                      "--custom-probe", str(Path(__file__).parent / "data" / "capitals.json"),
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "does not fit this model" in result.stderr, result.output


# ----------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_tuned_lens_beats_the_logit_lens_at_every_layer_but_the_last(smollm2_backend, capsys):
    """A CPU-sized budget (about a minute on 2 cores): the gain on held-out text, per layer."""
    settings = TrainSettings(steps=4, tokens_per_step=512, heldout_tokens=512)
    started = time.perf_counter()
    calibration = calibrate(smollm2_backend, builtin_corpus(), settings)
    held = calibration.record.heldout
    with capsys.disabled():
        print(f"\nSmolLM2 tuned lens, {settings.steps} steps x {settings.tokens_per_step} tokens, "
              f"{time.perf_counter() - started:.0f} s; held-out KL bits per layer (logit -> tuned):")
        print(", ".join(f"{i}: {a:.2f}->{b:.2f}" for i, (a, b) in enumerate(zip(held.logit_kl_bits, held.tuned_kl_bits))))
    assert held.tokens == 512
    assert all(saved > 0 for saved in held.saved_bits[:-1]), held
    assert held.logit_kl_bits[-1] == pytest.approx(0, abs=1e-6) and held.tuned_kl_bits[-1] == pytest.approx(0, abs=1e-6)
    assert all(p.grad is None for p in smollm2_backend.model.parameters())
    with pytest.raises(UsageError, match="hidden size 576"):
        check_fits(calibration.record, tiny_backend(), "smollm2.safetensors")
