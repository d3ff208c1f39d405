"""Scale without changing a score (issue 15): models placed over CPU and disk by a device map,
a residual cache that keeps every K-th boundary within a memory budget, rows bucketed by length,
pairs resumed from the run with their first layer skipped. Each is compared with the plain path
(every boundary kept, rows in probe order, pairs resumed from the baseline), and that path with
full runs that resume from nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuro_scan.analysis.ablation import run_ablation
from neuro_scan.analysis.attention import run_attention
from neuro_scan.analysis.circuit import plan_pairs, run_circuit
from neuro_scan.analysis.influence import block_influence
from neuro_scan.analysis.lens import run_lens
from neuro_scan.backend import open_backend
from neuro_scan.backend.base import Target
from neuro_scan.backend.loading import check_device_map
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.engine import Engine
from neuro_scan.errors import UsageError
from neuro_scan.probes import Probe, Sample, resolve_probe
from neuro_scan.scoring import by_length, gather_pairs, length_blocks, padding_share, score_logits, split_rows
from neuro_scan.stream_cache import cache_device
from neuro_scan.units import parse_max_memory, parse_size
from tiny_models import make_backend, tiny_model, tiny_tokenizer

TOL = 1e-5
# rows of many lengths (character tokens), single- and multi-token answers, choices
PROBE = Probe(name="lengths", description="", samples=(
    Sample("a", "b"), Sample("the cat sat on the", " mat"), Sample("1+1=", "2", choices=("1", "2", "3")),
    Sample("hello wor", "ld"), Sample("xy", "zz", choices=("zz", "ab")), Sample("abcdefghijklmnopq", "r"),
    Sample("twelve chars", " x"), Sample("0123456789", "10"), Sample("qq", "q"), Sample("one two three four", " five"),
))
ALL_PAIRS = [(i, j) for i in range(4) for j in range(i + 1, 4)]
SINGLES_AND_MORE = [frozenset({layer}) for layer in range(4)] + [frozenset({0, 2}), frozenset({1, 2, 3}), frozenset()]


def plain(backend, probe=PROBE, batch_size: int = 4) -> Engine:
    return Engine(backend, probe, batch_size=batch_size, keep_every=1, bucket_rows=False, pair_resume=False)


def assert_same(got, expected, tol: float = TOL) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.answer_logprob, b.answer_logprob, atol=tol, rtol=0)
        assert (a.correct == b.correct).all()


def full_runs(engine: Engine, configurations) -> list:
    """Each configuration as one full run per row block, from the token ids: no cached stream."""
    scores = []
    for configuration in configurations:
        parts = [gather_pairs(engine.backend.run(block.batch, skip=dict.fromkeys(configuration))[0], engine.plan,
                              block.rows, block.pairs)[0] for block in engine.blocks]
        scores.append(score_logits(engine.plan, engine.backend.unembed(torch.cat(parts))))
    return scores


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def backend(request):
    return TransformersBackend(tiny_model(request.param), tiny_tokenizer(), request.param)


# -- the residual cache: every K-th boundary --------------------------------------------------

def test_plain_path_equals_full_runs(backend):
    engine = plain(backend)
    assert_same(engine.skip_scan(SINGLES_AND_MORE), full_runs(engine, SINGLES_AND_MORE))


@pytest.mark.parametrize("keep_every", [2, 3, 5])
def test_every_spacing_gives_the_same_scores(backend, keep_every):
    reference = plain(backend)
    engine = Engine(backend, PROBE, batch_size=4, keep_every=keep_every, bucket_rows=False, pair_resume=False)
    assert engine._cache.boundaries == list(range(keep_every, 5, keep_every))  # K, 2K, ... <= L
    assert_same([engine.baseline], [reference.baseline])
    assert_same(engine.skip_scan(SINGLES_AND_MORE), reference.skip_scan(SINGLES_AND_MORE))
    # stacked in one forward: a layer skipped after a kept boundary, with runs that start later
    wide = Engine(backend, PROBE, batch_size=64, keep_every=keep_every)
    for layer in range(4):
        stacked = [frozenset({layer}), frozenset(), frozenset({layer, 3})]
        assert_same(wide.skip_scan(stacked), reference.skip_scan(stacked))
    components = [frozenset({Target(1, "mlp")}), frozenset({Target(2, "attention"), Target(3)}),
                  frozenset({Target(0, "head", 1)})]
    for ablation in ("zero", "mean"):
        assert_same(engine.ablation_scan(components, ablation), reference.ablation_scan(components, ablation))
    blocks = [(0, 2), (1, 4), (3, 3), (2, 3)]
    assert_same(engine.repeat_scan(blocks), reference.repeat_scan(blocks))
    for boundary in [4, 0, 1, 2, 3, 4, 2]:  # out of order too: the recomputed stream is not a stale one
        torch.testing.assert_close(engine.hidden_at(boundary), reference.hidden_at(boundary), atol=TOL, rtol=0)
        torch.testing.assert_close(engine.real_tokens_at(boundary), reference.real_tokens_at(boundary), atol=TOL, rtol=0)


def test_lens_and_influence_read_recomputed_boundaries_exactly(backend):
    reference, engine = plain(backend), Engine(backend, PROBE, batch_size=4, keep_every=3)
    for ours, theirs in zip(run_lens(engine).layers, run_lens(reference).layers):
        np.testing.assert_allclose(ours.answer_prob, theirs.answer_prob, atol=TOL, rtol=0)
        np.testing.assert_allclose(ours.kl_to_final_bits, theirs.kl_to_final_bits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(block_influence(engine), block_influence(reference), atol=TOL, rtol=0)


def test_memory_budget_sets_the_spacing():
    backend = make_backend("llama")
    reference = plain(backend)
    configurations = SINGLES_AND_MORE[:4]
    size = Engine(backend, PROBE, batch_size=4, keep_every=1).boundary_bytes  # rows bucketed: less padding kept
    assert Engine(backend, PROBE, batch_size=4).cache_bytes == 4 * size  # no budget: boundaries 1..L, L = 4
    for budget, spacing in [(10 * size, 1), (4 * size, 1), (4 * size - 1, 2), (2 * size, 2), (size, 3), (size - 1, 5),
                            (0, 5)]:
        engine = Engine(backend, PROBE, batch_size=4, cache_memory=budget)
        assert engine.keep_every == spacing
        assert engine.cache_bytes <= budget
        assert_same(engine.skip_scan(configurations), reference.skip_scan(configurations))


def test_cache_moves_to_the_cpu_only_when_an_accelerator_is_short():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    free = {gpu: 10_000, cpu: 0}.__getitem__
    assert cache_device({gpu: 5_000}, free) is None  # half the free memory: stays where it is made
    assert cache_device({gpu: 5_001}, free) == cpu
    assert cache_device({cpu: 10**15}, free) is None  # the CPU is never "short" here: nowhere else to go


def test_stop_layer_returns_that_boundary(backend):
    batch = backend.make_batch([[5, 6, 7, 8], [9, 10]])
    every = backend.run(batch, capture=True)
    for start in range(4):
        for stop in range(start, 5):
            got = backend.run(batch, start_layer=start, start_stream=every[start] if start else None, stop_layer=stop)
            torch.testing.assert_close(got[0], every[stop], atol=TOL, rtol=0)
    kept = backend.run(batch, capture=[2, 4], stop_layer=3)
    assert kept[0] is None and kept[4] is None and kept[1] is None
    torch.testing.assert_close(kept[2], every[2], atol=TOL, rtol=0)
    torch.testing.assert_close(kept[3], every[3], atol=TOL, rtol=0)


# -- rows bucketed by length ----------------------------------------------------------------------

def test_buckets_cut_padding_and_keep_every_score(backend):
    reference = plain(backend)
    engine = Engine(backend, PROBE, batch_size=4, keep_every=1, pair_resume=False)
    assert engine.padding_share < 0.1 < reference.padding_share
    assert_same([engine.baseline], [reference.baseline])  # per sample, in the probe's order
    assert_same(engine.skip_scan(SINGLES_AND_MORE), reference.skip_scan(SINGLES_AND_MORE))
    run = {name: run_attention(e) for name, e in (("ours", engine), ("theirs", reference))}
    np.testing.assert_allclose(run["ours"].answer_bits, run["theirs"].answer_bits, atol=1e-4)


def test_length_order_keeps_each_read_with_its_row(backend):
    plan = Engine(backend, PROBE, keep_every=1, bucket_rows=False).plan
    ordered = by_length(plan)
    lengths = [len(s) for s in ordered.sequences]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(map(tuple, ordered.sequences)) == sorted(map(tuple, plan.sequences))
    # every scored token is read at the same token of the same row content
    for old, new in zip(plan.token_pair.tolist(), ordered.token_pair.tolist()):
        old_row, new_row = plan.sequences[plan.pair_rows[old]], ordered.sequences[ordered.pair_rows[new]]
        assert old_row == new_row and plan.pair_cols[old] == ordered.pair_cols[new]
    assert (ordered.pair_rows.diff() >= 0).all()  # read positions in row order: blocks are contiguous


def test_length_blocks():
    lengths = [31, 30, 29, 27, 20, 19, 19, 5]
    blocks = length_blocks(lengths, 64)
    assert [(b.start, b.stop) for b in blocks] == [(0, 3), (3, 4), (4, 7), (7, 8)]  # 27 < 0.9 x 31: a new block
    assert [(b.start, b.stop) for b in length_blocks(lengths, 2)] == [(0, 2), (2, 4), (4, 6), (6, 7), (7, 8)]
    assert padding_share(lengths, blocks) < padding_share(lengths, split_rows(len(lengths), 64))
    assert padding_share([3, 3], [slice(0, 2)]) == 0


# -- pairs resumed after their second layer ----------------------------------------------------------

def mlp_rows(backend, work) -> int:
    """Rows that went through a layer's MLP while ``work()`` ran: the layer passes computed."""
    seen = [0]
    handles = [layer.mlp.register_forward_hook(lambda _m, args, _o: seen.__setitem__(0, seen[0] + args[0].shape[0]))
               for layer in backend.layers]
    try:
        work()
    finally:
        for handle in handles:
            handle.remove()
    return seen[0]


@pytest.mark.parametrize("keep_every", [1, 2, 5])
def test_pairs_resumed_from_the_first_layer_skipped_equal_the_plain_path(keep_every):
    backend = make_backend("llama")
    reference = plain(backend)
    engine = Engine(backend, PROBE, batch_size=4, keep_every=keep_every)
    pairs = [frozenset(pair) for pair in ALL_PAIRS]
    expected = reference.skip_scan(pairs)
    assert_same(engine.skip_scan(pairs), expected)
    mixed = [*pairs[::-1], frozenset({1}), frozenset({0, 1, 3}), frozenset()]  # pairs among other configurations
    assert_same(engine.skip_scan(mixed), reference.skip_scan(mixed))
    assert_same(full_runs(reference, pairs), expected)


def test_pair_resume_computes_fewer_layer_passes():
    backend = make_backend("llama")
    before = plain(backend, batch_size=64)
    after = Engine(backend, PROBE, batch_size=64, keep_every=1, bucket_rows=False)
    pairs = [frozenset(pair) for pair in ALL_PAIRS]
    passes = {name: mlp_rows(backend, lambda e=e: e.skip_scan(pairs)) for name, e in (("before", before), ("after", after))}
    assert passes["after"] < passes["before"]


def test_pair_resume_within_a_budget_that_leaves_no_room():
    backend = make_backend("llama")
    reference = plain(backend)
    size = reference.boundary_bytes
    for budget in (4 * size, 5 * size, 6 * size):  # nothing, one and two boundaries beside the baseline's
        engine = Engine(backend, PROBE, batch_size=4, cache_memory=budget)
        pairs = [frozenset(pair) for pair in ALL_PAIRS]
        assert_same(engine.skip_scan(pairs), reference.skip_scan(pairs))


def test_exhaustive_circuit_is_unchanged_by_pair_resume():
    backend = make_backend("gpt2")
    results = []
    for engine in (plain(backend), Engine(backend, PROBE, batch_size=4, cache_memory=2 * plain(backend).boundary_bytes)):
        singles = run_ablation(engine, seed=0)
        plan = plan_pairs("exhaustive", singles, top_k=3)
        results.append(run_circuit(engine, singles, plan, seed=0))
    for ours, theirs in zip(*(result.pairs for result in results)):
        assert (ours.first, ours.second, ours.kind) == (theirs.first, theirs.second, theirs.kind)
        assert ours.interaction.mean == pytest.approx(theirs.interaction.mean, abs=TOL)


# -- models larger than one device: a device map over CPU and disk ---------------------------------

DEMO_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "disk", "lm_head": "cpu"}


def everything(backend) -> dict:
    engine = Engine(backend, resolve_probe("arith"), batch_size=8, keep_every=2)
    singles = run_ablation(engine, seed=0)
    circuit = run_circuit(engine, singles, plan_pairs("exhaustive", singles, top_k=3), seed=0)
    return {"baseline": engine.baseline.answer_logprob, "singles": singles.ablated_logprob,
            "pairs": np.array([p.joint_damage.mean for p in circuit.pairs]),
            "lens": np.stack([layer.answer_prob for layer in run_lens(engine).layers]),
            "entropy": run_attention(engine).answer_bits,
            "mean ablation": engine.ablation_scan([frozenset({Target(1, "mlp")})], "mean")[0].answer_logprob,
            "unembedding": backend.unembedding_sha256()}


@pytest.mark.parametrize("placement", [dict(device_map=DEMO_MAP),
                                       dict(device_map="sequential", max_memory={"cpu": 1_500_000})])
def test_model_over_cpu_and_disk_gives_the_same_results(placement, tmp_path):
    loaded = open_backend("demo", device="auto", **placement, offload_folder=str(tmp_path))
    assert "disk" in loaded.model.hf_device_map.values()
    expected, got = everything(open_backend("demo", device="cpu")), everything(loaded)
    assert got.pop("unembedding") == expected.pop("unembedding")
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=TOL, rtol=0, err_msg=key)
    # accelerate's wrappers (which move inputs and load offloaded weights) survive every replaced forward
    assert all("forward" in layer.__dict__ for layer in loaded.layers)


def test_device_map_options_are_checked():
    check_device_map(None, "cpu")
    check_device_map("balanced", "auto")
    with pytest.raises(UsageError, match=r"^--device-map: 'everywhere' is not one of auto, balanced"):
        check_device_map("everywhere", "auto")
    with pytest.raises(UsageError, match="leave --device at auto"):
        check_device_map("auto", "cuda")


# -- memory sizes as users write them ----------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("8GB", 8 * 10**9), ("8G", 8 * 10**9), ("8gb", 8 * 10**9), ("1.5 GB", 15 * 10**8),
                                        ("512MiB", 512 * 2**20), ("2Gi", 2 * 2**30), ("4096", 4096), ("10B", 10),
                                        (" 3 KiB ", 3072), (".5M", 500_000), ("0", 0), ("1TB", 10**12)])
def test_sizes(text, size):
    assert parse_size(text, "--cache-memory") == size


@pytest.mark.parametrize("text", ["", "8 GBs", "-1GB", "GB", "8 PB", "8iB", "1e9", "8,5GB", "eight"])
def test_bad_sizes_name_the_option_on_one_line(text):
    with pytest.raises(UsageError) as error:
        parse_size(text, "--cache-memory")
    message = str(error.value)
    assert message.startswith(f"--cache-memory: '{text}' is not a size") and "\n" not in message


def test_max_memory():
    assert parse_max_memory("0=20GiB, cuda:1=10GB,cpu=64GB") == {0: 20 * 2**30, 1: 10**10, "cpu": 64 * 10**9}
    for text, why in [("0=20GiB,0=1GB", "given twice"), ("gpu=1GB", "not a GPU index"), ("20GiB", "DEVICE=SIZE"),
                      ("cpu=lots", "--max-memory cpu: 'lots' is not a size")]:
        with pytest.raises(UsageError, match=why):
            parse_max_memory(text)


# -- a real model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_math_probe_within_a_small_budget_equals_the_plain_path(smollm2_backend):
    """SmolLM2-135M (30 layers) on the math probe: a budget of a fifth of the full cache (K = 5),
    length buckets and pair resume give the plain path's scan, pairs and lens."""
    probe = resolve_probe("math")
    reference = plain(smollm2_backend, probe, batch_size=64)
    full = Engine(smollm2_backend, probe, keep_every=1)
    engine = Engine(smollm2_backend, probe, cache_memory=full.cache_bytes // 5)
    assert engine.keep_every == 5 and engine.padding_share < 0.1 < reference.padding_share
    singles = [frozenset({layer}) for layer in range(30)]
    pairs = [frozenset({i, j}) for i in (0, 7, 21) for j in range(i + 1, 30, 4)]
    assert_same(engine.skip_scan(singles + pairs), reference.skip_scan(singles + pairs), tol=1e-4)
    for ours, theirs in zip(run_lens(engine).layers, run_lens(reference).layers):
        np.testing.assert_allclose(ours.answer_prob, theirs.answer_prob, atol=1e-5, rtol=0)


# -- the command line: --device-map, --max-memory, --offload-folder, --cache-memory ----------------------

def steady(value):
    """A report without what differs between two runs of the same scan: when, how long, and how it was placed."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k not in ("created_at", "timings", "scale")
                and "seconds" not in k}
    return [steady(v) for v in value] if isinstance(value, list) else value


@pytest.mark.slow
def test_map_placed_over_cpu_and_disk_or_with_a_small_cache_gives_the_plain_report(tmp_path, caplog):
    """`map` on the demo model: loaded plainly, over CPU and disk by --device-map with a tiny
    --max-memory, and with a --cache-memory that keeps every other boundary (K = 2) or none (K = 5):
    the same report, numbers exactly equal, each saying what it used."""
    import json

    from test_cli_errors import run_inprocess

    runs = {"plain": [], "disk": ["--device-map", "sequential", "--max-memory", "cpu=1.5MB", "--offload-folder",
                                  str(tmp_path / "offload")],
            "auto": ["--device-map", "auto", "--max-memory", "cpu=1.5MB"],
            "K=2": ["--cache-memory", "350KB"], "K=5": ["--cache-memory", "1KB"]}
    reports, offloaded = {}, {}
    for name, extra in runs.items():
        caplog.clear()
        rc, stdout, stderr = run_inprocess(["map", "--model", "demo", "--probe", "arith", "--batch-size", "8",
                                            "-o", str(tmp_path / name), *extra])
        assert rc == 0, stdout + stderr
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
        offloaded[name] = any("offloaded to the" in r.getMessage() and "disk" in r.getMessage() for r in caplog.records)
    assert offloaded == {"plain": False, "disk": True, "auto": True, "K=2": False, "K=5": False}  # accelerate says so
    scale = {name: report["scale"] for name, report in reports.items()}
    assert scale["plain"] == {"device_map": None, "max_memory": None, "layer_devices": {"cpu": 4}, "cache_memory": None,
                              "cache_memory_bytes": None, "cache_keep_every": {"arith": 1}, "processes": 1}
    assert scale["disk"]["device_map"] == "sequential" and scale["disk"]["max_memory"] == "cpu=1.5MB"
    assert scale["auto"]["device_map"] == "auto"
    # a boundary of the probe's rows is 159,744 bytes: two of the four fit 350KB
    assert (scale["K=2"]["cache_memory_bytes"], scale["K=2"]["cache_keep_every"]) == (350_000, {"arith": 2})
    assert scale["K=5"]["cache_keep_every"] == {"arith": 5}  # nothing kept: every run from the token ids
    for name, report in reports.items():
        assert steady(report) == steady(reports["plain"]), name


@pytest.mark.parametrize("extra", [["--cache-memory", "lots"], ["--device-map", "sideways"],
                                   ["--max-memory", "cpu=1GB"], ["--device-map", "auto", "--max-memory", "0=1GB,0=2GB"]])
def test_bad_scale_options_fail_before_torch_is_imported(extra, tmp_path):
    import subprocess
    import sys

    from test_terminal import FAIL_FAST

    done = subprocess.run([sys.executable, "-c", FAIL_FAST, "ablate", "--model", "demo", *extra, "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()][0].startswith(f"error: {extra[-2]}")
    assert not (tmp_path / "out").exists()
