"""Block influence (ShortGPT): BI(layer) = 1 - cos(layer input, layer output), averaged over
every real (non-pad) token of the probe, from the baseline's cached streams."""

from __future__ import annotations

import numpy as np
import torch

from neuro_scan.engine import Engine


def block_influence(engine: Engine) -> list[float]:
    totals = torch.zeros(engine.num_layers, dtype=torch.float64)
    tokens = 0
    for block in engine.blocks:
        real = block.batch.attention_mask.bool()
        tokens += int(real.sum())
        for layer in range(engine.num_layers):
            cos = torch.nn.functional.cosine_similarity(
                block.streams[layer].float(), block.streams[layer + 1].float(), dim=-1
            )
            totals[layer] += cos[real].double().sum().cpu()
    return [float(1.0 - total / tokens) for total in totals.numpy().astype(np.float64)]
