"""Layer labels from evidence: ablation damage with its interval, logit-lens emergence and KL,
block influence. Labels stay the six names layer-scan colours; each carries its reason and
the signals behind it. The algorithm and its rationale are in docs/labels.md.

Rules, first match wins (L layers, r = layer / (L-1), E = the layer from which the answer stays
top-1 in the lens for at least half the samples; "high BI" = block influence above the median):

1. early_processing: r < 0.25, before E, and high BI: an early layer that still rewrites the
   token embedding heavily.
2. output: r >= 0.75, at or after E (or no emergence), and the layer visibly finalises the
   output distribution: its drop in lens KL-to-final is at least the median drop, or high BI.
3. reasoning: removal does significant damage (95% interval above zero) that is among the
   largest: top max(1, L // 5) of the layers not labelled by rules 1-2, and at least a
   quarter of the largest such damage.
4. semantic_processing: the max(1, L // 6) layers up to and including E, where the answer forms.
5. syntax: earlier than that (the answer is not yet readable through the lens).
6. formatting: after E (the answer is already top-1; the layer refines it).
7. semantic_processing: everything left when the answer never emerges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for annotations: keeps LABELS (and the charts) importable without torch
    from neuro_scan.analysis.ablation import AblationResult
    from neuro_scan.analysis.lens import LensResult

LABELS = ("early_processing", "syntax", "reasoning", "semantic_processing", "formatting", "output")


@dataclass
class LayerLabel:
    layer: int
    label: str
    reason: str
    signals: dict


def label_layers(ablation: AblationResult, block_influence: list[float], lens: LensResult) -> list[LayerLabel]:
    count = len(ablation.layers)
    bi = np.asarray(block_influence, dtype=float)
    bi_median = float(np.median(bi))
    emergence = lens.probe_emergence
    lens_name = f"{lens.lens} lens"
    kl = np.array([float(np.mean(layer.kl_to_final_bits)) for layer in lens.layers])
    kl_drop = np.concatenate([[np.nan], kl[:-1] - kl[1:]])  # how much each layer brings the lens to the output
    drop_median = float(np.nanmedian(kl_drop)) if count > 1 else 0.0
    forming_window = max(1, count // 6)

    def depth(i: int) -> float:
        return i / max(count - 1, 1)

    def before_emergence(i: int) -> bool:
        return emergence is None or i < emergence

    early = {i for i in range(count) if depth(i) < 0.25 and before_emergence(i) and bi[i] > bi_median}
    output = {i for i in range(count) if depth(i) >= 0.75 and not (emergence is not None and i < emergence)
              and ((not np.isnan(kl_drop[i]) and kl_drop[i] >= drop_median) or bi[i] > bi_median)}
    candidates = [i for i in ablation.ranked_layers if i not in early | output]
    top_n = max(1, count // 5)
    max_damage = max((ablation.layers[i].damage.mean for i in candidates), default=0.0)
    labels = []
    for i, layer in enumerate(ablation.layers):
        signals = {
            "relative_depth": round(depth(i), 4),
            "damage": layer.damage.mean,
            "damage_ci": layer.damage.as_list(),
            "damage_rank": ablation.ranked_layers.index(i),  # 0 = most damaging, over all layers
            "block_influence": float(bi[i]),
            "block_influence_median": bi_median,
            "lens_kl_to_final_bits": float(kl[i]),
            "lens_kl_drop_bits": None if np.isnan(kl_drop[i]) else float(kl_drop[i]),
            "probe_emergence": emergence,
        }
        if i in early:
            label, reason = "early_processing", (
                f"early layer (depth {depth(i):.2f}) rewriting the stream strongly: block influence {bi[i]:.3f} "
                f"> median {bi_median:.3f}, before the answer emerges")
        elif i in output:
            label, reason = "output", (
                f"late layer finalising the output: lens KL to the final distribution falls by "
                f"{signals['lens_kl_drop_bits'] or 0:.2f} bits here (median {drop_median:.2f}), block influence {bi[i]:.3f}")
        elif (layer.significant_damage and i in candidates[:top_n] and max_damage > 0
              and layer.damage.mean >= 0.25 * max_damage):
            label, reason = "reasoning", (
                f"removal costs {layer.damage.mean:.3f} nats (95% CI {layer.damage.low:.3f}..{layer.damage.high:.3f}), "
                f"among the {top_n} largest")
        elif emergence is not None and emergence - forming_window <= i <= emergence:
            label, reason = "semantic_processing", f"the answer forms here: top-1 in the {lens_name} from layer {emergence}"
        elif emergence is not None and i < emergence:
            label, reason = "syntax", f"before the answer forms (it emerges in the {lens_name} at layer {emergence})"
        elif emergence is not None:
            label, reason = "formatting", f"the answer is already top-1 in the {lens_name} (since layer {emergence}); refines it"
        else:
            label, reason = "semantic_processing", "the answer never becomes top-1 in the lens; middle of the computation"
        labels.append(LayerLabel(i, label, reason, signals))
    return labels
