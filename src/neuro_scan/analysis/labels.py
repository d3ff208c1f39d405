"""Layer labels from evidence: ablation damage with its interval, logit-lens emergence, block
influence. Labels stay the six names layer-scan colours; each carries its reason.

Rules, first match wins (E = probe emergence layer from the lens; L layers; r = layer / (L-1)):

1. early_processing: layer 0, or r < 0.25 while block influence is above the median (the layer
   still rewrites the token embedding heavily) and before E.
2. reasoning: removal does significant damage (interval above zero) and the damage is among the
   largest: in the top max(1, L // 5) of layers 1..L-1 and at least a quarter of their largest damage.
3. output: among the last max(1, L // 10) layers, at or after E, or r >= 0.9 with block
   influence above the median (the last layers sharpen the distribution).
4. semantic_processing: the max(1, L // 6) layers leading up to and including E, where the
   answer forms; also every remaining layer when the answer never emerges.
5. syntax: earlier than that (the answer is not yet readable through the lens).
6. formatting: after E (the answer is already top-1; the layer refines it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuro_scan.analysis.ablation import AblationResult

LABELS = ("early_processing", "syntax", "reasoning", "semantic_processing", "formatting", "output")


@dataclass
class LayerLabel:
    layer: int
    label: str
    reason: str
    signals: dict


def label_layers(ablation: AblationResult, block_influence: list[float] | None,
                 probe_emergence: int | None) -> list[LayerLabel]:
    layers = ablation.layers
    count = len(layers)
    top_n = max(1, count // 5)
    max_damage = max((layer.damage.mean for layer in layers[1:]), default=0.0)  # layer 0 is early_processing
    bi = np.asarray(block_influence) if block_influence is not None else None
    bi_median = float(np.median(bi)) if bi is not None else None
    output_band = max(1, count // 10)
    forming_window = max(1, count // 6)
    emergence = probe_emergence
    candidates = [i for i in ablation.ranked_layers if i != 0]  # layer 0 is always early_processing
    result = []
    for index, layer in enumerate(layers):
        depth = index / max(count - 1, 1)
        high_bi = bi is not None and bi[index] > bi_median
        before_emergence = emergence is not None and index < emergence
        at_or_after = emergence is not None and index >= emergence
        signals = {
            "relative_depth": round(depth, 4),
            "damage": layer.damage.mean,
            "damage_ci": layer.damage.as_list(),
            "damage_rank": ablation.ranked_layers.index(index),  # 0 = most damaging, over all layers
            "block_influence": float(bi[index]) if bi is not None else None,
            "probe_emergence": emergence,
        }
        if index == 0 or (depth < 0.25 and high_bi and not at_or_after):
            label = "early_processing"
            reason = "first layer" if index == 0 else f"early layer rewriting the stream strongly (BI {bi[index]:.3f} > median {bi_median:.3f})"
        elif (layer.significant_damage and candidates.index(index) < top_n and max_damage > 0
                and layer.damage.mean >= 0.25 * max_damage):
            label = "reasoning"
            reason = (f"removal costs {layer.damage.mean:.3f} nats (95% CI {layer.damage.low:.3f}..{layer.damage.high:.3f}),"
                      f" rank {signals['damage_rank'] + 1} of {count}")
        elif (index >= count - output_band and (at_or_after or emergence is None)) or (depth >= 0.9 and high_bi):
            label = "output"
            reason = "last layers, answer already top-1 in the lens" if at_or_after else "last layers with block influence above the median"
        elif emergence is not None and emergence - forming_window <= index <= emergence:
            label = "semantic_processing"
            reason = f"the answer forms here: it becomes top-1 in the logit lens at layer {emergence}"
        elif before_emergence:
            label = "syntax"
            reason = f"before the answer forms (it emerges in the logit lens at layer {emergence})"
        elif at_or_after:
            label = "formatting"
            reason = f"answer already top-1 in the logit lens since layer {emergence}; refines it"
        else:
            label = "semantic_processing"
            reason = "the answer never becomes top-1 in the lens; middle of the computation"
        result.append(LayerLabel(index, label, reason, signals))
    return result
