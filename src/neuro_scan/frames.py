"""Results as pandas DataFrames, for notebooks: ``result.to_frame()`` on every result dataclass.

One row per layer (ablation, lens, map), per layer and head (attention), per layer pair
(circuit), per probe and layer (cross-probe), per duplicated block and repeat count
(prompt-repeat), per model and relative depth (compare). Columns are plain numbers and strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


class Framed:
    """Mixin: ``to_frame()`` looks up this module's table for the result's type (pandas is
    imported only then: commands that never make a table do not pay for it)."""

    def to_frame(self) -> pd.DataFrame:
        return to_frame(self)


def _interval(prefix: str, interval) -> dict:
    return {prefix: interval.mean, f"{prefix}_ci_low": interval.low, f"{prefix}_ci_high": interval.high,
            f"{prefix}_p_value": interval.p_value, f"{prefix}_p_value_adjusted": interval.p_value_adjusted}


def _ablation(result) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{"layer": layer.layer, "score": layer.score, **_interval("damage", layer.damage),
                          "significant": layer.significant, "accuracy": layer.accuracy,
                          **_interval("accuracy_drop", layer.accuracy_drop)} for layer in result.layers])


def _lens(result) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{"layer": layer.layer, "lens": result.lens, "mean_answer_prob": layer.mean_answer_prob,
                          "median_answer_rank": layer.median_answer_rank, "top1_fraction": layer.top1_fraction,
                          "mean_entropy_bits": layer.mean_entropy_bits,
                          "mean_kl_to_final_bits": layer.mean_kl_to_final_bits} for layer in result.layers])


def _attention(result) -> pd.DataFrame:
    import pandas as pd

    layers, heads = result.answer_bits.shape
    return pd.DataFrame([{"layer": layer, "head": head, "answer_bits": result.answer_bits[layer, head],
                          "answer_normalized": result.answer_normalized[layer, head],
                          "all_positions_bits": result.all_positions_bits[layer, head],
                          "all_positions_normalized": result.all_positions_normalized[layer, head]}
                         for layer in range(layers) for head in range(heads)])


def _circuit(result) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{"layer_i": pair.first, "layer_j": pair.second, "reason": pair.reason, "kind": pair.kind,
                          **_interval("joint_damage", pair.joint_damage), **_interval("interaction", pair.interaction)}
                         for pair in result.pairs])


def _cross_probe(result) -> pd.DataFrame:
    import pandas as pd

    return pd.concat([_ablation(entry.ablation).assign(probe=entry.probe.name) for entry in result.per_probe],
                     ignore_index=True)


def _prompt_repeat(result) -> pd.DataFrame:
    import pandas as pd

    rows = [{"condition": f"prompt x{rep.count}", "count": rep.count, "first": None, "stop": None,
             **_interval("change", rep.condition.change), "verdict": rep.verdict} for rep in result.repetitions]
    rows += [{"condition": f"layers {d.first}..{d.stop - 1} twice", "count": None, "first": d.first, "stop": d.stop,
              **_interval("change", d.condition.change), "verdict": None} for d in result.duplications]
    return pd.DataFrame(rows)


def _comparison(result) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{"model": profile.name, "layer": layer, "relative_depth": float(depth), "damage": float(damage)}
                         for profile in result.profiles
                         for layer, (depth, damage) in enumerate(zip(profile.depths, profile.damage))])


def _map(result) -> pd.DataFrame:
    import pandas as pd

    frame = _ablation(result.ablation)
    if result.labels is not None:
        frame["label"] = [label.label for label in result.labels]
    if result.block_influence is not None:
        frame["block_influence"] = result.block_influence
    if result.lens is not None:
        frame = pd.concat([frame, _lens(result.lens).drop(columns=["layer", "lens"]).add_prefix("lens_")], axis=1)
    return frame


TABLES = {"AblationResult": _ablation, "LensResult": _lens, "AttentionResult": _attention, "CircuitResult": _circuit,
          "CrossProbeResult": _cross_probe, "PromptRepeatResult": _prompt_repeat, "Comparison": _comparison,
          "MapResult": _map}


def to_frame(result) -> pd.DataFrame:
    """The table of any result dataclass (and of the command wrappers: LensRun, CircuitRun, AttentionRun)."""
    inner = next((getattr(result, name) for name in ("lens", "result", "attention")
                  if type(result).__name__ not in TABLES and hasattr(result, name)), result)
    table = TABLES.get(type(inner).__name__)
    if table is None:
        raise TypeError(f"no table for {type(result).__name__}")
    return table(inner)
