"""Layer labels from evidence: ablation damage with its test, logit-lens emergence and KL, block
influence. Labels stay the six names layer-scan colours; each carries a reason that states the
rule that matched with the numbers that made it match, and the signals behind those numbers.
The algorithm and its rationale are in docs/labels.md.

Rules, first match wins (L layers, r = layer / (L-1), E = the layer from which the answer stays
top-1 in the lens for at least half the samples; "high BI" = block influence above the median):

1. early_processing: r < 0.25, before E, and high BI: an early layer that still rewrites the
   token embedding heavily.
2. output: r >= 0.75, at or after E (or no emergence), and the layer visibly finalises the
   output distribution: the lens KL to the final distribution falls at this layer (by more than
   zero and at least the median change over layers), or high BI.
3. reasoning: removal does significant damage (Benjamini-Hochberg adjusted p <= 0.05, damage
   above zero) that is among the largest: one of the top max(1, L // 5) of the layers not
   labelled by rules 1-2, and at least a quarter of the largest damage among those.
4. semantic_processing: the max(1, L // 6) layers up to and including E, where the answer forms.
5. syntax: earlier than that (the answer is not yet readable through the lens).
6. formatting: after E (the answer is already top-1; the layer refines it).
7. no rule matched (only when the answer never emerges): a guess from depth alone, flagged
   weak: syntax in the first third, semantic_processing in the middle, formatting in the last.

Evidence: "measured" when a rule matched; "weak" for rule 7, and for a reasoning label on a
probe the model mostly gets wrong (baseline accuracy below 0.5), where damage measures how much
less likely wrong answers become rather than lost ability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for annotations: keeps LABELS (and the charts) importable without torch
    from neuro_scan.analysis.ablation import AblationResult
    from neuro_scan.analysis.lens import LensResult

LABELS = ("early_processing", "syntax", "reasoning", "semantic_processing", "formatting", "output")
SOLVED_ACCURACY = 0.5  # below it, a probe's damage says little about ability


@dataclass
class LayerLabel:
    layer: int
    label: str
    reason: str
    signals: dict


def ordinal(rank: int) -> str:
    """1 -> "1st", 2 -> "2nd", 12 -> "12th", 23 -> "23rd"."""
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def label_layers(ablation: AblationResult, block_influence: list[float], lens: LensResult) -> list[LayerLabel]:
    count = len(ablation.layers)
    bi = np.asarray(block_influence, dtype=float)
    bi_median = float(np.median(bi))
    emergence = lens.probe_emergence
    lens_name = f"{lens.lens} lens"
    kl = np.array([float(np.mean(layer.kl_to_final_bits)) for layer in lens.layers])
    kl_drop = np.concatenate([[np.nan], kl[:-1] - kl[1:]])  # > 0: this layer brings the lens closer to the output
    drop_median = float(np.nanmedian(kl_drop)) if count > 1 else 0.0
    forming_window = max(1, count // 6)
    weak_probe = ablation.baseline.accuracy.mean < SOLVED_ACCURACY

    def depth(i: int) -> float:
        return i / max(count - 1, 1)

    def before_emergence(i: int) -> bool:
        return emergence is None or i < emergence

    def kl_falls(i: int) -> bool:
        return not np.isnan(kl_drop[i]) and kl_drop[i] > 0 and kl_drop[i] >= drop_median

    early = {i for i in range(count) if depth(i) < 0.25 and before_emergence(i) and bi[i] > bi_median}
    output = {i for i in range(count) if depth(i) >= 0.75 and not (emergence is not None and i < emergence)
              and (kl_falls(i) or bi[i] > bi_median)}
    candidates = [i for i in ablation.ranked_layers if i not in early | output]
    top_n = max(1, count // 5)
    max_damage = max((ablation.layers[i].damage.mean for i in candidates), default=0.0)
    labels = []
    for i, layer in enumerate(ablation.layers):
        damage = layer.damage
        signals = {
            "relative_depth": round(depth(i), 4),
            "damage": damage.mean,
            "damage_ci": damage.as_list(),
            "damage_p_value": damage.p_value,
            "damage_p_value_adjusted": damage.p_value_adjusted,
            "damage_rank": ablation.ranked_layers.index(i),  # 0 = most damaging, over all layers
            "damage_rank_among_candidates": candidates.index(i) if i in candidates else None,  # rule 3's pool
            "candidates": len(candidates),
            "candidate_max_damage": max_damage,
            "reasoning_top_n": top_n,
            "baseline_accuracy": ablation.baseline.accuracy.mean,
            "block_influence": float(bi[i]),
            "block_influence_median": bi_median,
            "lens_kl_to_final_bits": float(kl[i]),
            "lens_kl_drop_bits": None if np.isnan(kl_drop[i]) else float(kl_drop[i]),
            "lens_kl_drop_median_bits": drop_median,
            "probe_emergence": emergence,
        }
        evidence = "measured"
        if i in early:
            label, rule = "early_processing", "early_processing"
            reason = (f"early layer (depth {depth(i):.2f} < 0.25, {_before(emergence)}) rewriting the stream strongly: "
                      f"block influence {bi[i]:.3f} > median {bi_median:.3f}")
        elif i in output:
            label, rule = "output", "output"
            clauses = []
            if kl_falls(i):
                clauses.append(f"the {lens_name}'s KL to the final distribution falls by {kl_drop[i]:.2f} bits here "
                               f"(median change per layer {drop_median:.2f})")
            if bi[i] > bi_median:
                clauses.append(f"block influence {bi[i]:.3f} > median {bi_median:.3f}")
            reason = f"late layer (depth {depth(i):.2f} >= 0.75) finalising the output: " + " and ".join(clauses)
        elif (layer.significant_damage and i in candidates[:top_n] and max_damage > 0
              and damage.mean >= 0.25 * max_damage):
            label, rule = "reasoning", "reasoning"
            most = "the most damaging" if top_n == 1 else f"among the {top_n} most damaging"
            reason = (f"removal costs {damage.mean:.3f} nats (95% CI {damage.low:.3f}..{damage.high:.3f}, "
                      f"adjusted p {damage.p_value_adjusted:.2g}), the {ordinal(signals['damage_rank'] + 1)} largest "
                      f"damage of {count} layers; rule: significant, {most} of the {len(candidates)} layers not "
                      f"labelled early_processing or output (here {ordinal(candidates.index(i) + 1)}), and at least "
                      f"a quarter of their largest damage, {max_damage:.3f}")
            if weak_probe:
                evidence = "weak"
                reason += (f"; weak: the model answers only {ablation.baseline.accuracy.mean:.0%} of the probe "
                           f"correctly, so the damage is to the likelihood of mostly wrong answers")
        elif emergence is not None and emergence - forming_window <= i <= emergence:
            label, rule = "semantic_processing", "answer_forms"
            where = "at this layer" if i == emergence else f"at layer {emergence}, {_layers(emergence - i)} later"
            reason = (f"the answer forms here: it becomes top-1 in the {lens_name} {where} (for at least half the "
                      f"samples, to the last layer); window: layers {emergence - forming_window}..{emergence}")
        elif emergence is not None and i < emergence:
            label, rule = "syntax", "before_answer"
            reason = (f"before the answer forms: it becomes top-1 in the {lens_name} at layer {emergence}, "
                      f"{_layers(emergence - i)} later")
        elif emergence is not None:
            label, rule = "formatting", "after_answer"
            reason = (f"after the answer formed: top-1 in the {lens_name} since layer {emergence}, "
                      f"{_layers(i - emergence)} earlier; the layer refines it")
        else:
            label, rule, evidence = _by_depth(depth(i)), "none", "weak"
            reason = (f"weak: no rule matched, and the answer never becomes top-1 in the {lens_name}, so nothing marks "
                      f"where it forms; labelled by depth {depth(i):.2f} alone ({_third(depth(i))} third)")
        signals["rule"] = rule
        signals["evidence"] = evidence
        labels.append(LayerLabel(i, label, reason, signals))
    return labels


def _before(emergence: int | None) -> str:
    return "the answer never emerges in the lens" if emergence is None else f"before the answer emerges at layer {emergence}"


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def _third(depth: float) -> str:
    return "first" if depth < 1 / 3 else "middle" if depth < 2 / 3 else "last"


def _by_depth(depth: float) -> str:
    return {"first": "syntax", "middle": "semantic_processing", "last": "formatting"}[_third(depth)]
