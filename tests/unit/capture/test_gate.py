"""The field gate on the simulated microscope: every new stop counted once, nothing else."""

import numpy as np
import pytest

from edge.capture.gate import Decision, FieldGate
from edge.capture.simulator import SimulatedMicroscope, build_slide, random_scan, score_gate


@pytest.fixture(scope="module")
def slide(samples):
    return build_slide(samples, 8, 6, seed=0)


def run(slide, script):
    sim = SimulatedMicroscope(slide, script)
    gate = FieldGate()
    events = [gate(frame.image) for frame in sim.frames()]
    return sim, gate, events


SCRIPT = [
    ["rest", 5],  # 0: start on a field -> counted
    ["goto", 700, 0, 20],  # 1: pan right
    ["rest", 8],  # 2: new field -> counted once, not again while resting
    ["goto", 700, 600, 15],  # 3
    ["defocus", 6, 4.0],  # 4: stopped but out of focus -> refused
    ["rest", 6],  # 5: focused again -> counted
    ["goto", 20, 15, 25],  # 6: back over the first field
    ["rest", 8],  # 7: revisit -> refused
    ["goto", 1400, 900, 30],  # 8: a fast diagonal pan
    ["rest", 8],  # 9: new -> counted
    ["goto", 1380, 930, 3],  # 10: a nudge within the same field
    ["rest", 6],  # 11: mostly the same area -> refused
]


def test_scripted_scan_counts_each_new_stop_once(slide):
    sim, gate, events = run(slide, SCRIPT)
    accepted_steps = [t.step for t, e in zip(sim.truths, events, strict=True) if e.accepted]
    assert accepted_steps == [0, 2, 5, 9]
    by_step = {}
    for truth, event in zip(sim.truths, events, strict=True):
        by_step.setdefault(truth.step, []).append(event.decision)
    assert Decision.BLURRED in by_step[4] and Decision.ACCEPTED not in by_step[4]
    assert set(by_step[7]) <= {Decision.SETTLING, Decision.ALREADY_COUNTED, Decision.MOVING}
    assert Decision.ALREADY_COUNTED in by_step[7] and Decision.ALREADY_COUNTED in by_step[11]
    moving = [e for t, e in zip(sim.truths, events, strict=True) if t.moving]
    assert moving and all(e.decision is Decision.MOVING for e in moving[1:])
    assert gate.counts["accepted"] == 4
    # the tracked position follows the true stage (registration), within tens of pixels
    drift = max(np.hypot(e.position[0] - t.x, e.position[1] - t.y) for t, e in zip(sim.truths, events, strict=True))
    assert drift < 60, drift


def test_exposure_is_checked(slide):
    gate = FieldGate()
    field = slide[:480, :640]
    decisions = [gate((field * 0.1).astype(np.uint8)).decision for _ in range(5)]
    assert decisions[-1] is Decision.DARK
    gate.new_slide()
    decisions = [gate(np.clip(field.astype(np.int32) + 200, 0, 255).astype(np.uint8)).decision for _ in range(5)]
    assert decisions[-1] is Decision.BRIGHT


def test_long_random_scan_precision_and_recall(slide, capsys):
    script = random_scan(slide.shape[:2], 640, 480, stops=30, seed=3)
    sim, _, events = run(slide, script)
    score = score_gate(sim.truths, [e.accepted for e in events], script, 640, 480, max_overlap=0.3)
    with capsys.disabled():
        print(f"\ngate over a {len(events)}-frame random scan: {score}")
    assert score.stops_new >= 8 and score.stops_revisit >= 10
    assert score.counted_twice == 0
    assert score.precision >= 0.9 and score.recall >= 0.85


def test_counted_areas_survive_a_restart_through_the_journal(tmp_path, samples):
    # issue 13.7: the map was not persisted, so a restart counted the same stage areas again
    import datetime as dt

    from edge.analysis.field import FieldResult
    from edge.capture.decode import decode_image
    from edge.capture.gate import Decision, FieldGate
    from edge.counting.journal import SlideJournal
    from edge.counting.tally import Slide

    image = decode_image(sorted(samples.glob("*.jpg"))[0].read_bytes(), "f.jpg")
    gate = FieldGate()
    decisions = [gate(image).decision for _ in range(gate.settings.still_frames + 2)]
    assert Decision.ACCEPTED in decisions
    journal = SlideJournal(tmp_path / "j.sqlite")
    slide = Slide(specimen_id="S", started=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    journal.begin(slide)
    journal.record(slide, FieldResult(0, "field-0000@1-abc", 10, 10, []), gate.export_state())
    journal.close()

    restarted = FieldGate()  # a new process: a fresh gate, the same stage position
    restarted.restore_state(SlideJournal(tmp_path / "j.sqlite").gate_state(slide))
    again = [restarted(image).decision for _ in range(gate.settings.still_frames + 2)]
    assert Decision.ACCEPTED not in again and Decision.ALREADY_COUNTED in again
    fresh = FieldGate()
    assert Decision.ACCEPTED in [fresh(image).decision for _ in range(gate.settings.still_frames + 2)]
