"""Block influence (ShortGPT): BI(layer) = 1 - cos(layer input, layer output), averaged over
every real (non-pad) token of the probe, from the baseline's cached streams."""

from __future__ import annotations

import torch

from neuro_scan.engine import Engine


def block_influence(engine: Engine) -> list[float]:
    influence = []
    for layer in range(engine.num_layers):
        cos = torch.nn.functional.cosine_similarity(engine.real_tokens_at(layer).float(),
                                                    engine.real_tokens_at(layer + 1).float(), dim=-1)
        influence.append(float(1.0 - cos.double().mean()))
    return influence
