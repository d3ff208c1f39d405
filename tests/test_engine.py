"""The fast ablation engine equals the naive computation, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuro_scan.analysis.ablation import run_ablation
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from tiny_models import make_backend

PROBE = Probe(
    name="tiny",
    description="mixed single- and multi-token answers, with and without choices",
    samples=(
        Sample("abc", "d"),
        Sample("hello wor", "ld"),
        Sample("1+1=", "2", choices=("1", "2", "3")),
        Sample("xy", "zz", choices=("zz", "ab")),
        Sample("the cat", " sat"),
    ),
)


def naive_answer_logprobs(backend, probe, skip=frozenset()):
    """One full forward per sample and continuation at batch 1, full logits, no caching."""
    out, correct = [], []
    for sample in probe.samples:
        prompt = backend.tokenize(sample.prompt, add_special_tokens=True)
        conts = sample.choices or (sample.answer,)
        lps = {}
        all_top = {}
        for cont in conts:
            ids = backend.tokenize(cont, add_special_tokens=False)
            seq = torch.tensor([prompt + ids])
            with torch.no_grad():
                stream = backend.run(backend.make_batch([prompt + ids]), skip={j: None for j in skip})[0]
                logits = backend.unembed(stream)[0]
            lp = torch.log_softmax(logits, -1)
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(ids))
            lps[cont] = sum(float(lp[p, t]) for p, t in zip(positions, ids))
            all_top[cont] = all(int(logits[p].argmax()) == t for p, t in zip(positions, ids))
            del seq
        out.append(lps[sample.answer])
        correct.append(max(lps, key=lps.get) == sample.answer if sample.choices else all_top[sample.answer])
    return np.array(out), np.array(correct)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("batch_size", [2, 64])
def test_fast_scan_equals_naive_per_layer_forwards(model_type, batch_size):
    backend = make_backend(model_type)
    engine = Engine(backend, PROBE, batch_size=batch_size)
    base_lp, base_correct = naive_answer_logprobs(backend, PROBE)
    np.testing.assert_allclose(engine.baseline.answer_logprob, base_lp, atol=1e-4)
    assert (engine.baseline.correct == base_correct).all()
    result = run_ablation(engine, seed=0)
    for layer in range(backend.num_layers):
        lp, correct = naive_answer_logprobs(backend, PROBE, frozenset({layer}))
        np.testing.assert_allclose(result.ablated_logprob[layer], lp, atol=1e-4)
        assert result.layers[layer].accuracy == pytest.approx(correct.mean())
        assert result.layers[layer].damage.mean == pytest.approx(float((base_lp - lp).mean()), abs=1e-4)


def test_pair_skips_equal_naive():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=64)
    configs = [frozenset({0, 2}), frozenset({1, 3}), frozenset({2, 3}), frozenset({0, 1})]
    scores = engine.skip_scan(configs)
    for config, got in zip(configs, scores):
        lp, _ = naive_answer_logprobs(backend, PROBE, config)
        np.testing.assert_allclose(got.answer_logprob, lp, atol=1e-4)


def test_ablating_nothing_equals_baseline():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=64)
    alone, mixed, _ = engine.skip_scan([frozenset()]) + engine.skip_scan([frozenset(), frozenset({1})])
    np.testing.assert_array_equal(alone.answer_logprob, engine.baseline.answer_logprob)
    np.testing.assert_allclose(mixed.answer_logprob, engine.baseline.answer_logprob, atol=1e-5)
    np.testing.assert_allclose(naive_answer_logprobs(backend, PROBE)[0], engine.baseline.answer_logprob, atol=1e-4)



# -- the journal and workers seam: configurations found, shared and gathered ---------------------------


class DictJournal:
    """The journal's contract in memory: what was recorded under a key is found under it."""

    def __init__(self):
        self.entries = {}

    def find(self, key):
        return self.entries.get(key)

    def record(self, key, scores):
        self.entries[key] = scores


class TwoWorkers:
    """Two processes in one: this one scores every other configuration; the other's share is scored
    by ``other(indices)`` (a separate engine on the same model) when gathering."""

    def __init__(self, other):
        self.other, self.theirs = other, []

    def share(self, indices):
        self.theirs = indices[1::2]
        return indices[::2]

    def gather(self, scored):
        return {**scored, **dict(zip(self.theirs, self.other(self.theirs)))}


def assert_scores_equal(found, expected):
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.answer_logprob, b.answer_logprob, atol=1e-5, rtol=0)


def test_a_scan_resumed_from_its_journal_and_shared_between_workers_equals_one_plain_scan():
    from neuro_scan.backend.base import Target

    backend = make_backend("llama")
    skips = [frozenset({layer}) for layer in range(backend.num_layers)] + [frozenset({0, 2}), frozenset({1, 3})]
    targets = [frozenset({Target(1, "attention")}), frozenset({Target(2, "head", 1), Target(0, "mlp")})]
    blocks = [(0, 0), (1, 3)]
    plain = Engine(backend, PROBE, batch_size=8)

    interrupted = Engine(backend, PROBE, batch_size=8)
    interrupted.journal = journal = DictJournal()
    interrupted.skip_scan(skips[:3])
    assert sorted(journal.entries) == ["skip L0", "skip L1", "skip L2"]

    resumed = Engine(backend, PROBE, batch_size=8)
    resumed.journal = journal
    seen = []
    resumed.workers = TwoWorkers(lambda chosen: plain.skip_scan([skips[i] for i in chosen]))
    assert_scores_equal(resumed.skip_scan(skips, on_scored=lambda i, s: seen.append(i)), plain.skip_scan(skips))
    assert sorted(seen) == list(range(len(skips)))  # the journal's, this process's and the other's
    assert resumed.workers.theirs == list(range(4, len(skips), 2))  # 0..2 were in the journal
    resumed.workers = TwoWorkers(lambda chosen: plain.ablation_scan([targets[i] for i in chosen], "mean"))
    assert_scores_equal(resumed.ablation_scan(targets, "mean"), plain.ablation_scan(targets, "mean"))
    resumed.workers = TwoWorkers(lambda chosen: plain.repeat_scan([blocks[i] for i in chosen]))
    assert_scores_equal(resumed.repeat_scan(blocks), plain.repeat_scan(blocks))
    assert {"skip L0,L2", "skip L1,L3", "mean L1.attention", "mean L0.mlp,L2.H1", "repeat 0-0", "repeat 1-3"} <= set(
        journal.entries)
    assert len(journal.entries) == len(skips) + len(targets) + len(blocks)
