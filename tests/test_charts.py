"""The figures say what they show: layer axes with whole layers only (no -1, no L, no half
layers), heatmaps that grow with their rows and put layer 0 on top, lens rows labelled with the
prompt and the whole answer, every answer token read at its own position (checked against the
model's own logits), 1-based ranks, stars only on significant layers, titled pages that say so
when plotly.min.js is missing, and compare legends without absolute paths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neuro_scan.backend.loading import demo_model_dir
from neuro_scan.report import (
    attention,
    charts,
    circuit,
    comparison,
    cross_probe,
    lens,
    prompt_repeat,
)
from neuro_scan.report import map as map_report

TOP = 5  # the map's lens records 5 top tokens


@pytest.fixture(scope="module")
def arith(cli, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("arith")
    result = cli(["map", "--model", "demo", "--probe", "arith", "--max-samples", "20", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def documents(cli, tmp_path_factory) -> dict[str, dict]:
    """circuit, prompt-repeat and cross-probe documents of the demo."""
    out = tmp_path_factory.mktemp("others")
    runs = {"circuit.json": ["circuit", "--probe", "arith"],
            "prompt_repeat.json": ["prompt-repeat", "--probe", "arith", "--repeat-counts", "1,2,3"],
            "cross_probe.json": ["cross-probe", "--probes", "arith,facts"]}
    found = {}
    for name, args in runs.items():
        result = cli([*args, "--model", "demo", "--max-samples", "12", "--output", str(out / name)])
        assert result.exit_code == 0, result.output
        found[name] = json.loads((out / name / name).read_text(encoding="utf-8"))
    return found


def whole_layers(axis, layers: int, reversed_: bool = False) -> None:
    """A layer axis: ticks at every layer from 0, and a range that ends half a layer beyond the first and last."""
    assert axis.tickmode == "linear" and axis.dtick == 1 and axis.tick0 == 0
    ends = [-0.5, layers - 0.5]
    assert list(axis.range) == (ends[::-1] if reversed_ else ends)


# ------------------------------------------------------------------------------------------- the map


def test_map_layer_axes_show_whole_layers_only(arith):
    layers = arith["total_layers"]
    figures = map_report.files_of(arith).figures
    assert set(figures) == {"ablation.html", "accuracy.html", "logit_lens.html", "entropy_profile.html",
                            "block_influence.html", "attention.html"}
    for name in ("ablation.html", "logit_lens.html", "entropy_profile.html", "block_influence.html"):
        whole_layers(figures[name].layout.xaxis, layers)
    whole_layers(figures["accuracy.html"].layout.xaxis, layers)
    whole_layers(figures["attention.html"].layout.yaxis, layers, reversed_=True)  # layer 0 on top


def test_heatmaps_grow_with_their_rows(arith):
    deep = {**arith, "attention": {"answer_position_bits": [[1.0] * 9] * 30,
                                   "answer_position_normalized": [[0.5] * 9] * 30}}
    assert attention.figure(deep).layout.height >= 30 * charts.ROW_PIXELS
    assert attention.figure(deep).layout.height > attention.figure(arith).layout.height
    samples = len(arith["logit_lens_trajectory"])
    assert lens.answer_figure(arith).layout.height >= samples * charts.ROW_PIXELS


def test_lens_rows_name_prompt_and_whole_answer(arith):
    figure = lens.answer_figure(arith)
    heatmap = figure.data[0]
    for index, (name, sample) in enumerate(zip(heatmap.y, arith["samples"])):
        assert name.startswith(f"{index + 1}. ") and sample["prompt"] in name and f"'{sample['answer']}'" in name
    assert figure.layout.yaxis.autorange == "reversed"  # sample 1 on top
    assert "whole" in heatmap.colorbar.title.text
    assert any("probability of the whole answer" in note.text for note in figure.layout.annotations)
    marks = {trace.name: trace.marker for trace in figure.data[1:]}
    assert all(mark.color not in ("white", "#ffffff") for mark in marks.values())  # visible in the legend


def test_lens_hover_ranks_count_from_one(arith):
    heatmap = lens.answer_figure(arith).data[0]
    for sample, texts in zip(arith["logit_lens_trajectory"], heatmap.text):
        for cell, text in zip(sample, texts):
            assert f"worst answer-token rank {cell['target_token_rank'] + 1} " in text
            for position in cell["answer_positions"]:
                assert f"{position['token']!r} p {position['prob']:.3f}, rank {position['rank'] + 1} " in text


def test_every_answer_token_is_read_at_its_own_position(arith):
    """At the last layer the lens is the model's output: each answer token's probability, rank and
    the top tokens at the position predicting it equal the model's own logits (run here with plain
    transformers); the whole answer's probability is their product, its rank the worst."""
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32).eval()
    for sample, trajectory in zip(arith["samples"], arith["logit_lens_trajectory"]):
        prompt = tokenizer(sample["prompt"])["input_ids"]
        answer = tokenizer(sample["answer"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0].double()
        probs = logits.softmax(-1)
        last = trajectory[-1]
        positions = last["answer_positions"]
        assert [p["token"] for p in positions] == [tokenizer.decode([t]) for t in answer]
        for k, (token, position) in enumerate(zip(answer, positions)):
            row = probs[len(prompt) - 1 + k]
            assert position["prob"] == pytest.approx(float(row[token]), rel=1e-4, abs=1e-7)
            assert position["rank"] == int((row > row[token]).sum())
            assert [tok for tok, _ in position["top_k"]] == [tokenizer.decode([t]) for t in row.topk(TOP).indices]
        for cell in trajectory:
            assert cell["target_token_prob"] == pytest.approx(math.prod(p["prob"] for p in cell["answer_positions"]),
                                                              rel=1e-4, abs=1e-12)
            assert cell["target_token_rank"] == max(p["rank"] for p in cell["answer_positions"])


def test_stars_only_on_significant_layers(arith):
    figure = map_report.files_of(arith).figures["ablation.html"]
    stars = [trace for trace in figure.data if trace.type == "scatter"]
    significant = {row["layer_idx"] for row in arith["ablation_results"] if row["significant"]}
    assert arith["top_important_layers"] and set(arith["top_important_layers"]) <= significant
    assert [list(star.x) for star in stars] == [arith["top_important_layers"]]
    faded = {x: opacity for bar in figure.data if bar.type == "bar" for x, opacity in zip(bar.x, bar.marker.opacity)}
    assert {x for x, opacity in faded.items() if opacity == 1.0} == significant
    assert any("stars: the top layers" in note.text for note in figure.layout.annotations)
    nothing = {**arith, "top_important_layers": [],
               "ablation_results": [{**row, "significant": False} for row in arith["ablation_results"]]}
    assert not [trace for trace in map_report.files_of(nothing).figures["ablation.html"].data if trace.type == "scatter"]


def test_new_pictures(arith):
    figures = map_report.files_of(arith).figures
    influence = figures["block_influence.html"]
    assert list(influence.data[0].y) == arith["block_influence"]
    assert list(influence.data[1].y) == [row["score_delta"] for row in arith["ablation_results"]]
    accuracy = figures["accuracy.html"]
    assert list(accuracy.data[0].y) == [row["accuracy"] for row in arith["ablation_results"]]
    categories = arith["category_accuracy"]
    assert len(categories) > 1  # arith: carry and no carry
    heatmap = accuracy.data[1]
    assert [list(row) for row in heatmap.z] == [categories[name]["per_layer"] for name in sorted(categories)]


def test_pages_are_titled_and_say_when_plotly_is_missing(arith):
    figure = map_report.files_of(arith).figures["logit_lens.html"]
    text = charts.page(figure)
    assert f"<title>{figure.layout.title.text}</title>" in text
    assert 'id="no-plotly"' in text and "if (window.Plotly)" in text
    assert text.index('id="no-plotly"') < text.index("if (window.Plotly)")


# ------------------------------------------------------------------------------ the other commands


def test_circuit_cross_probe_and_prompt_repeat_axes(documents):
    pairs = documents["circuit.json"]
    layers = pairs["total_layers"]
    figure = circuit.figure(pairs)
    whole_layers(figure.layout.xaxis, layers)
    whole_layers(figure.layout.yaxis, layers, reversed_=True)
    assert any("significant" in note.text for note in figure.layout.annotations)

    figure = cross_probe.figure(documents["cross_probe.json"])
    whole_layers(figure.layout.xaxis, layers)
    for trace, entry in zip(figure.data, documents["cross_probe.json"]["per_probe"]):
        filled = [i for i, symbol in enumerate(trace.marker.symbol) if symbol == "circle"]
        assert filled == sorted(entry["significant_layers"])

    repeat = documents["prompt_repeat.json"]
    figure = prompt_repeat.figure(repeat)
    assert list(figure.layout.xaxis.tickvals) == [r["count"] for r in repeat["repetitions"]]
    whole_layers(figure.layout.xaxis2, layers)


def test_compare_legends_tell_reports_apart_without_absolute_paths(cli, arith, tmp_path):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(arith), encoding="utf-8")
    result = cli(["compare", str(tmp_path / "first" / "report.json"), str(tmp_path / "second" / "report.json"),
                  "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "comparison.json").read_text(encoding="utf-8"))
    legend = [trace.name for trace in comparison.figure(document).data if trace.type == "scatter" and trace.showlegend
              is not False]
    assert legend == ["demo (first/report.json)", "demo (second/report.json)"]
    assert not any(str(tmp_path) in name for name in legend)
