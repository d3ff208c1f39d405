"""`calibrate`'s output: the tuned-lens file (safetensors, written atomically) and its summary."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def write(calibration, destination: Path) -> list[Path]:
    from neuro_scan.analysis.tuned_lens import lens_file_bytes
    from neuro_scan.report import write_lens_file

    return [write_lens_file(destination, lens_file_bytes(calibration.lens, calibration.record))]


def summary(calibration) -> list:
    record = calibration.record
    held = record.heldout
    table = Table("layer", "logit lens KL (bits)", "tuned lens KL (bits)", "saved (bits)")
    for layer, (logit, tuned, saved) in enumerate(zip(held.logit_kl_bits, held.tuned_kl_bits, held.saved_bits)):
        table.add_row(str(layer), f"{logit:.3f}", f"{tuned:.3f}", f"{saved:.3f}")
    return [f"[bold]{record.model_id}[/bold] · {record.settings['steps']} steps x {record.settings['tokens_per_step']} "
            f"tokens in {record.training['seconds']:.0f} s · held-out: {held.tokens} tokens of {record.corpus['name']}",
            table]
