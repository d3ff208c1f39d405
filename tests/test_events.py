"""A run's events carry its results as they arrive: each skipped layer's scores before the scan ends,
equal to the report written at the end."""

from __future__ import annotations

import pytest

from neuro_scan import events
from neuro_scan.api import run


def test_each_layer_is_reported_as_it_is_scored_and_equals_the_report(tmp_path):
    seen: list[events.Event] = []
    outcome = run("ablate", model="demo", probe="arith", batch_size=64, output=str(tmp_path), sink=seen.append)
    kinds = [type(event).__name__ for event in seen]
    scored = [event for event in seen if isinstance(event, events.ConfigurationScored)]
    ablation_end = next(i for i, e in enumerate(seen) if isinstance(e, events.PhaseFinished) and e.phase == "ablation")
    # 32 rows, 64 per forward: two layers per forward, so the first layers arrive while the scan still runs
    first_scored = seen.index(scored[0])
    progress_after = [e for e in seen[first_scored:ablation_end] if isinstance(e, events.Advanced)]
    assert progress_after, "results should arrive before the scan's last forward"
    assert sorted(event.index for event in scored) == [0, 1, 2, 3]
    rows = {row["layer_idx"]: row for row in outcome.document["ablation_results"]}
    for event in scored:
        assert event.damage == pytest.approx(rows[event.index]["score_delta"], abs=1e-12)
        assert [event.low, event.high] == pytest.approx(rows[event.index]["score_delta_ci"], abs=1e-12)
        assert event.score == pytest.approx(rows[event.index]["score"], abs=1e-9)
        assert len(event.answer_logprob) == outcome.document["sample_count"]
    assert kinds[0] == "PhaseStarted" and kinds[-1] == "Finished"
    assert [e.written for e in seen if isinstance(e, events.Finished)] == [[str(p) for p in outcome.written]]
    assert all(events.event_to_dict(e)["event"] == type(e).__name__ for e in seen)  # JSON-friendly


def test_each_pair_of_a_circuit_is_reported_as_it_is_scored(tmp_path):
    seen: list[events.Event] = []
    outcome = run("circuit", model="demo", probe="arith", strategy="exhaustive", output=str(tmp_path),
                  sink=seen.append)
    pairs = [event for event in seen if isinstance(event, events.ConfigurationScored) and event.phase == "pairs"]
    written = {(p["layer_i"], p["layer_j"]): p for p in outcome.document["all_interactions"]}
    assert sorted(event.label for event in pairs) == sorted(f"L{i}+L{j}" for i, j in written)
    for event in pairs:
        i, j = (int(part[1:]) for part in event.label.split("+"))
        assert event.damage == pytest.approx(written[(i, j)]["joint_delta"], abs=1e-12)
