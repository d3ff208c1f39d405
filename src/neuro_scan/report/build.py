"""Result dataclasses -> the report.json dictionary and ablation.csv rows.

report.json keeps every key of the reference tool's report (so ``layer-scan annotate`` and
other consumers keep working: ``layer_labels`` is an object with a string key per layer,
``top_important_layers`` a list of ints) and adds ours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np

from neuro_scan import __version__
from neuro_scan.analysis.ablation import AblationResult, ProbeScore
from neuro_scan.analysis.labels import LayerLabel
from neuro_scan.analysis.lens import LensResult
from neuro_scan.analysis.tuned_lens import LensRecord
from neuro_scan.backend.base import ModelInfo
from neuro_scan.probes import Probe

REPORT_FORMAT = "neuro-scan-report/1"
CSV_COLUMNS = [
    # the reference's columns, in its order
    "layer_idx", "score", "score_delta", "uncertainty", "log_odds", "accuracy", "label",
    # ours
    "score_delta_ci_low", "score_delta_ci_high", "significant", "accuracy_drop", "accuracy_drop_ci_low",
    "accuracy_drop_ci_high", "expected_digit", "block_influence", "lens_answer_prob", "lens_answer_rank",
    "p_value", "p_value_adjusted",
]


@dataclass
class RunInfo:
    """What every report records about how it was made."""

    model: ModelInfo
    probe: Probe
    seed: int
    batch_size: int
    top_k: int
    timings: dict[str, float] = field(default_factory=dict)
    lens_file: str | None = None


def header(run: RunInfo, command: str) -> dict:
    probe = run.probe
    return {
        "format": REPORT_FORMAT,
        "command": command,
        "tool": {"name": "neuro-scan", "version": __version__},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": run.model.model_id,
        "probe": probe.name,
        "total_layers": run.model.num_layers,
        "model_info": vars(run.model).copy(),
        "dtype": run.model.dtype,
        "device": run.model.device,
        "backend": run.model.backend,
        "probe_info": {"name": probe.name, "source": probe.source, "description": probe.description,
                       "answer_type": probe.answer_type},
        "sample_count": len(probe.samples),
        "seed": run.seed,
        "batch_size": run.batch_size,
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


def probe_score(score: ProbeScore) -> dict:
    return {
        "score": score.score.mean,
        "score_ci": score.score.as_list(),
        "score_stderr": score.score.stderr,
        "accuracy": score.accuracy.mean,
        "accuracy_ci": score.accuracy.as_list(),
        "log_odds": score.log_odds,
        "expected_digit": score.expected_digit,
    }


def ablation_rows(ablation: AblationResult) -> list[dict]:
    return [
        {
            "layer_idx": layer.layer,
            "score": layer.score,
            "score_delta": layer.damage.mean,
            "uncertainty": layer.damage.stderr,
            "log_odds": layer.log_odds,
            "accuracy": layer.accuracy,
            "score_delta_ci": layer.damage.as_list(),
            "significant": layer.significant_damage or layer.significant_gain,
            "p_value": layer.damage.p_value,
            "p_value_adjusted": layer.damage.p_value_adjusted,
            "accuracy_drop": layer.accuracy_drop.mean,
            "accuracy_drop_ci": layer.accuracy_drop.as_list(),
            "expected_digit": layer.expected_digit,
        }
        for layer in ablation.layers
    ]


def category_accuracy(ablation: AblationResult, probe: Probe) -> dict:
    """Accuracy per sample category, at baseline and with each layer skipped."""
    categories = np.array([sample.category for sample in probe.samples])
    return {
        str(category): {
            "samples": int((categories == category).sum()),
            "baseline": float(ablation.baseline_correct[categories == category].mean()),
            "per_layer": [float(v) for v in ablation.ablated_correct[:, categories == category].mean(axis=1)],
        }
        for category in sorted(set(categories.tolist()))
    }


def ablation_section(ablation: AblationResult, run: RunInfo) -> dict:
    top_k = run.top_k
    return {
        "baseline_score": ablation.baseline.score.mean,
        "baseline_uncertainty": ablation.baseline.score.stderr,
        "scan_time_seconds": round(ablation.seconds, 3),
        "ablation_results": ablation_rows(ablation),
        "top_important_layers": [int(i) for i in ablation.top_layers(top_k)],
        "baseline": probe_score(ablation.baseline),
        "score_definition": "mean teacher-forced log-probability of the answer (nats); "
                            "score_delta = baseline - ablated (positive: removing the layer hurts)",
        "significance_definition": "score_delta_ci: 95% bootstrap-t interval over samples; p_value: two-sided "
                                   "bootstrap-t test of score_delta = 0; p_value_adjusted: Benjamini-Hochberg across "
                                   "the layers; significant: p_value_adjusted <= 0.05 (docs/statistics.md)",
        "significantly_important_layers": [int(i) for i in ablation.important_layers],
        "improving_layers": [int(i) for i in ablation.improving_layers],
        "ranked_layers": [int(i) for i in ablation.ranked_layers],
        "category_accuracy": category_accuracy(ablation, run.probe),
        "per_sample": per_sample_section(ablation),
    }


def per_sample_section(ablation: AblationResult) -> dict:
    """Per-sample outcomes, so later commands (circuit) can pair new runs with this scan's samples."""
    return {
        "baseline": {"answer_logprob": ablation.baseline_logprob.tolist(),
                     "correct": ablation.baseline_correct.astype(bool).tolist()},
        "ablated": {"answer_logprob": ablation.ablated_logprob.tolist(),
                    "correct": ablation.ablated_correct.astype(bool).tolist()},
    }


def lens_trajectory(lens: LensResult) -> list[list[dict]]:
    """The reference's ``logit_lens_trajectory``: [sample][layer] objects."""
    samples = len(lens.answer_tokens)
    return [
        [
            {
                "layer_idx": layer.layer,
                "top_token": layer.top_tokens[s][0],
                "top_token_prob": float(layer.top_probs[s, 0]),
                "target_token_prob": float(layer.answer_prob[s]),
                "target_token_rank": int(layer.answer_rank[s]),
                "entropy": float(layer.entropy_bits[s]),
                "kl_to_final_bits": float(layer.kl_to_final_bits[s]),
                "top_k": [[tok, float(p)] for tok, p in zip(layer.top_tokens[s], layer.top_probs[s])],
            }
            for layer in lens.layers
        ]
        for s in range(samples)
    ]


def lens_summary(lens: LensResult, tuned: LensRecord | None = None) -> dict:
    """The lens section; ``tuned``: the record of the tuned lens used (None: the logit lens)."""
    return {
        "lens": lens.lens,
        "tuned_lens": asdict(tuned) if tuned is not None else None,
        "position": "answer probability and rank over every answer token, each at the position predicting it; "
                    "top-k, entropy and KL at each sample's first answer position",
        "answer_prob_definition": "probability of the whole answer (product over its tokens, teacher-forced)",
        "answer_rank_definition": "worst rank among the answer's tokens (0: every answer token is top-1)",
        "kl_definition": "KL(model's final distribution || lens distribution), bits",
        "entropy_unit": "bits",
        "answer_tokens": lens.answer_tokens,
        "emergence_layer": lens.probe_emergence,
        "emergence_definition": "first layer from which the answer stays top-1 to the last layer for at least half the samples",
        "prob_emergence_layer": lens.probe_prob_emergence,
        "per_sample_emergence": lens.emergence,
        "per_sample_prob_emergence": lens.prob_emergence,
        "prob_emergence_threshold": lens.emergence_prob_threshold,
        "mean_answer_prob": [float(np.mean(layer.answer_prob)) for layer in lens.layers],
        "mean_entropy_bits": [float(np.mean(layer.entropy_bits)) for layer in lens.layers],
        "mean_entropy_bits_ci": [interval.as_list() for interval in lens.entropy_mean],
        "mean_kl_to_final_bits": [float(np.mean(layer.kl_to_final_bits)) for layer in lens.layers],
        "top1_fraction": [float(np.mean(layer.answer_rank == 0)) for layer in lens.layers],
    }


def lens_report(run: RunInfo, lens: LensResult, tuned: LensRecord | None = None) -> dict:
    """logit_lens.json of `logit-lens`: the trajectory with the reference's keys and the summary."""
    report = header(run, "logit-lens")
    report["logit_lens_trajectory"] = lens_trajectory(lens)
    report["logit_lens"] = lens_summary(lens, tuned)
    report["tuned_lens_file"] = run.lens_file
    return report


def attention_section(attention) -> dict:
    """``attention_entropy`` ([layer][head], bits at the answer position) as the reference names it;
    ``attention`` None (the phase failed): the reference key holds [] and ours null."""
    if attention is None:
        return {"attention_entropy": [], "attention": None}
    return {
        "attention_entropy": attention.answer_bits.tolist(),
        "attention": {
            "unit": "bits",
            "capture": "eager attention weights (switched to for the capture, whatever the model was loaded with)",
            "answer_position_bits": attention.answer_bits.tolist(),
            "answer_position_normalized": attention.answer_normalized.tolist(),
            "all_positions_bits": attention.all_positions_bits.tolist(),
            "all_positions_normalized": attention.all_positions_normalized.tolist(),
            "layer_mean_bits": attention.layer_mean_bits,
            "normalization": "entropy / log2(number of attended keys); 1 = uniform over the keys it can see",
        },
    }


@dataclass
class Phase:
    """How one phase of a command went: "done", "failed" (``error`` says why) or "pending" (not
    reached yet: a report written while the command still runs, so finished phases are on disk)."""

    status: str = "pending"
    error: str | None = None

    @classmethod
    def failed(cls, error: BaseException) -> Phase:
        """The error as one line: its type, message and notes (an out-of-memory note says how much)."""
        text = "; ".join(" ".join(part.split()) for part in [str(error), *getattr(error, "__notes__", [])] if part.strip())
        return cls("failed", f"{type(error).__name__}: {text}" if text else type(error).__name__)


def phases_section(phases: dict[str, Phase]) -> dict:
    """``phases``: each phase in the order run, with its status (and error when it failed)."""
    return {"phases": {name: {k: v for k, v in vars(phase).items() if v is not None} for name, phase in phases.items()}}


def failed_phases(report: dict) -> dict[str, str]:
    """phase -> its error, for each phase the report names as failed."""
    return {name: phase.get("error", "") for name, phase in (report.get("phases") or {}).items()
            if phase.get("status") == "failed"}


def attention_report(run: RunInfo, attention, phases: dict[str, Phase]) -> dict:
    report = header(run, "attention")
    report.update(phases_section(phases))
    report.update(attention_section(attention))
    return report


def labels_section(labels: list[LayerLabel]) -> dict:
    return {
        "layer_labels": {str(lab.layer): lab.label for lab in labels},
        "layer_label_details": {str(lab.layer): {"label": lab.label, "reason": lab.reason, "signals": lab.signals}
                                for lab in labels},
    }


def map_report(run: RunInfo, ablation: AblationResult, phases: dict[str, Phase], lens: LensResult | None = None,
               block_influence: list[float] | None = None, labels: list[LayerLabel] | None = None, attention=None,
               tuned: LensRecord | None = None) -> dict:
    """report.json of `map`. A phase that failed or has not run yet leaves its keys empty: the
    reference's keys hold [] (``layer_labels``: "" for every layer), ours null."""
    report = header(run, "map")
    report.update(phases_section(phases))
    report.update(ablation_section(ablation, run))
    if labels is not None:
        report.update(labels_section(labels))
    else:
        report.update({"layer_labels": {str(layer): "" for layer in range(run.model.num_layers)},
                       "layer_label_details": {}})
    report["logit_lens_trajectory"] = lens_trajectory(lens) if lens is not None else []
    report["logit_lens"] = lens_summary(lens, tuned) if lens is not None else None
    report["tuned_lens_file"] = run.lens_file
    report.update(attention_section(attention))
    report["block_influence"] = block_influence if block_influence is not None else []
    report["block_influence_definition"] = "1 - cos(layer input, layer output), mean over every non-pad probe token"
    return report


def ablation_report(run: RunInfo, ablation: AblationResult) -> dict:
    report = header(run, "ablate")
    report.update(ablation_section(ablation, run))
    return report


def csv_rows(report: dict) -> list[dict]:
    labels = report.get("layer_labels", {})
    bi = report.get("block_influence") or []
    trajectory = report.get("logit_lens_trajectory") or []
    rows = []
    for entry in report["ablation_results"]:
        layer = entry["layer_idx"]
        lens_probs = [sample[layer]["target_token_prob"] for sample in trajectory]
        lens_ranks = [sample[layer]["target_token_rank"] for sample in trajectory]
        rows.append({
            **{k: entry[k] for k in ("layer_idx", "score", "score_delta", "uncertainty", "log_odds", "accuracy")},
            "label": labels.get(str(layer), ""),
            "score_delta_ci_low": entry["score_delta_ci"][0],
            "score_delta_ci_high": entry["score_delta_ci"][1],
            "significant": entry["significant"],
            "accuracy_drop": entry["accuracy_drop"],
            "accuracy_drop_ci_low": entry["accuracy_drop_ci"][0],
            "accuracy_drop_ci_high": entry["accuracy_drop_ci"][1],
            "expected_digit": entry["expected_digit"],
            "block_influence": bi[layer] if layer < len(bi) else None,
            "lens_answer_prob": float(np.mean(lens_probs)) if lens_probs else None,
            "lens_answer_rank": float(np.median(lens_ranks)) if lens_ranks else None,
            "p_value": entry.get("p_value"),
            "p_value_adjusted": entry.get("p_value_adjusted"),
        })
    return rows
