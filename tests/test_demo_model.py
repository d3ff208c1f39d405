"""The built-in demo model (src/neuro_scan/data/demo_model) and its probes (arith, facts).

These checks load the shipped files with plain transformers, independent of neuro-scan's
engine, and run a short training with scripts/train_demo_model.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "src" / "neuro_scan" / "data" / "demo_model"
PROBES_DIR = ROOT / "src" / "neuro_scan" / "data" / "probes"
SCRIPT = ROOT / "scripts" / "train_demo_model.py"
MAX_BYTES = 5 * 1024 * 1024


def _load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def record() -> dict:
    return _load_json(MODEL_DIR / "training_record.json")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    m.eval()
    return m


@pytest.fixture(scope="module")
def trainer():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sequences(tokenizer, examples):
    """Token ids of prompt (with the tokenizer's own <bos>) + answer, as the engine builds them,
    and how many of them belong to the prompt."""
    out = []
    for prompt, answer in examples:
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        out.append((p + a, len(p)))
    return out


@torch.no_grad()
def _teacher_forced_accuracy(model, tokenizer, examples) -> float:
    seqs = _sequences(tokenizer, examples)
    length = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), length), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (s, _) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    pred = model(input_ids=ids, attention_mask=attn).logits.argmax(-1)
    correct = 0
    for i, (s, n_prompt) in enumerate(seqs):
        # position t-1 predicts token t, for every answer token t
        correct += all(int(pred[i, t - 1]) == s[t] for t in range(n_prompt, len(s)))
    return correct / len(seqs)


# ----------------------------------------------------------------------------- (a) accuracy

def test_shipped_model_reproduces_recorded_heldout_accuracy(model, tokenizer, record):
    pairs = [tuple(p) for p in record["heldout_pairs"]]
    assert len(pairs) == 810
    examples = [(f"{a}+{b}=", f"{a + b}.") for a, b in pairs]
    acc = _teacher_forced_accuracy(model, tokenizer, examples)
    assert abs(acc - record["heldout_addition_accuracy"]) <= 1e-9
    assert acc >= 0.9


def test_shipped_model_knows_the_fact_table(model, tokenizer, record):
    examples = [(f"{name} is", f" {colour}.") for name, colour in record["fact_table"].items()]
    acc = _teacher_forced_accuracy(model, tokenizer, examples)
    assert abs(acc - record["fact_accuracy"]) <= 1e-9
    assert acc == 1.0


def test_tokenizer_is_char_level_with_bos(tokenizer):
    text = "mira is blue. 23+45=68."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text) + 1
    assert [tokenizer.decode([i]) for i in ids[1:]] == list(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(" ", add_special_tokens=False)["input_ids"] != [tokenizer.unk_token_id]


# ----------------------------------------------------------------------------- (b) training

@pytest.mark.slow
def test_short_training_run_lowers_the_loss(trainer):
    # one thread: about 15 s on one free core (a second thread on a busy machine only slows it)
    result = trainer.train(steps=150, seed=1, threads=1)
    assert len(result.losses) == 150
    assert result.final_loss < 0.6 * result.losses[0]
    assert 0.0 <= result.heldout_accuracy <= 1.0
    # held-out pairs never appear among the training pairs
    train_pairs, heldout = trainer.split_pairs(1)
    assert not set(train_pairs) & set(heldout)
    assert len(heldout) == 810


@pytest.mark.slow
def test_training_is_reproducible(trainer):
    first = trainer.train(steps=20, seed=3, threads=1)
    second = trainer.train(steps=20, seed=3, threads=1)
    assert first.losses == second.losses


# ----------------------------------------------------------------------------- (c) files

def test_model_files_are_small_and_unquantized(record):
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert total <= MAX_BYTES
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= MAX_BYTES
    config = _load_json(MODEL_DIR / "config.json")
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (MODEL_DIR / name).is_file(), name
    for key in ("seed", "steps", "wall_time_s", "threads", "torch_version", "final_train_loss",
                "heldout_addition_accuracy", "fact_accuracy", "heldout_pairs", "fact_table"):
        assert key in record, key


def test_weights_are_float32():
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            assert f.get_tensor(key).dtype == torch.float32, key


# ----------------------------------------------------------------------------- (d) probes

def test_arith_probe_uses_heldout_pairs_with_correct_sums(record):
    from neuro_scan.probes import load_builtin

    probe = load_builtin("arith")
    assert probe.group == "demo"
    assert len(probe.samples) == 32
    heldout = {tuple(p) for p in record["heldout_pairs"]}
    categories = set()
    for s in probe.samples:
        m = re.fullmatch(r"(\d\d)\+(\d\d)=", s.prompt)
        assert m, s.prompt
        a, b = int(m.group(1)), int(m.group(2))
        assert (a, b) in heldout
        assert s.answer == f"{a + b}."
        assert s.category == ("carry" if a % 10 + b % 10 >= 10 else "no_carry")
        categories.add(s.category)
    assert categories == {"carry", "no_carry"}


def test_facts_probe_matches_fact_table(record):
    from neuro_scan.probes import load_builtin

    probe = load_builtin("facts")
    table = record["fact_table"]
    assert probe.group == "demo"
    assert sorted(s.prompt for s in probe.samples) == sorted(f"{n} is" for n in table)
    colours = sorted(set(table.values()))
    for s in probe.samples:
        name = s.prompt[: -len(" is")]
        assert s.answer == f" {table[name]}."
        assert sorted(s.choices) == sorted(f" {c}." for c in colours)


def test_probe_tokens_equal_training_tokens(tokenizer):
    """prompt (with <bos>) + answer (no specials) tokenizes to <bos> + characters of the text."""
    from neuro_scan.probes import load_builtin

    for name in ("arith", "facts"):
        for s in load_builtin(name).samples:
            for answer in s.choices or (s.answer,):
                p = tokenizer(s.prompt)["input_ids"]
                a = tokenizer(answer, add_special_tokens=False)["input_ids"]
                expected = [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(list(s.prompt + answer))
                assert p + a == expected
                assert tokenizer.unk_token_id not in p + a
