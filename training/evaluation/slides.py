"""Slide-level validation: marrow slides composed from held-back cells at known blast shares,
counted by the appliance, the blast rule's call set against the truth.

The analogue of the seed paper's patient-level table. Every slide is made of matek_bm *test*
cells only (never trained on, never used to choose a checkpoint): blasts at the slide's share,
the other countable marrow cells (LYT, MON, EOS, NGS, PMO) for the rest, plus 10% not-countable
cells (NIF, ART) on top, composed into fields (``training.data.compose``) and counted through the
appliance's own count path (field analysis with the bundle's backend, tally, rules, guard).
matek_bm keeps 120 test blasts, so slides above 120 blasts reuse cells (a cell appears at most
``ceil(need / 120)`` times per slide, each time scaled, turned and placed anew).

    marrow-edge validate-slides --bundle models/marrow-bm [--shares 0,5,10,20,30,40,50] [--repeats 3]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.compose import DATA, compose_field, load_patches, matek_splits

log = logging.getLogger(__name__)
OTHERS = ("LYT", "MON", "EOS", "NGS", "PMO")
NOT_COUNTABLE = ("NIF", "ART")


@dataclass
class SlideOutcome:
    true_percent: float
    fields: int
    counted: int
    blast_percent: float
    ci: tuple[float, float]
    state: str
    domain: str

    @property
    def expected(self) -> str:
        """What the rule should say: above 20% positive, at or below 20% negative."""
        return "positive" if self.true_percent > 20 else "negative"


def _draw(pool: list, count: int, rng: np.random.Generator) -> list:
    if count <= 0:
        return []
    reps = int(np.ceil(count / len(pool)))
    picks = np.concatenate([rng.permutation(len(pool)) for _ in range(reps)])[:count]
    return [pool[i] for i in picks]


def validate(
    bundle_dir: Path,
    shares=(0, 5, 10, 20, 30, 40, 50),
    repeats: int = 3,
    cells: int = 200,
    data: Path = DATA,
    seed: int = 0,
    rule_id: str = "acute_leukaemia",
) -> list[SlideOutcome]:
    from edge.config import AppConfig
    from edge.service.pipeline import build_appliance

    appliance = build_appliance(AppConfig(bundle=bundle_dir))
    test = matek_splits(data)["test"]
    patches = load_patches([s for s in test if s.label in ("BLA", *OTHERS, *NOT_COUNTABLE)])
    blasts = [p for p in patches if p.code == "BLA"]
    others = [p for p in patches if p.code in OTHERS]
    junk = [p for p in patches if p.code in NOT_COUNTABLE]
    rng = np.random.default_rng(seed)
    outcomes = []
    for share in shares:
        for _ in range(repeats):
            n_blast = round(cells * share / 100)
            chosen = _draw(blasts, n_blast, rng) + _draw(others, cells - n_blast, rng) + _draw(junk, cells // 10, rng)
            order = rng.permutation(len(chosen))
            tally = appliance.new_tally()
            index = 0
            for start in range(0, len(order), 6):
                field, _, _ = compose_field([chosen[i] for i in order[start : start + 6]], rng)
                tally.add(appliance.analyzer(field, index, f"field_{index:03d}"))
                index += 1
            rule = next(r for r in tally.rule_states() if r.id == rule_id)
            share_out = next(s for s in tally.shares() if s.name == "blast")
            outcomes.append(
                SlideOutcome(
                    float(share),
                    index,
                    tally.denominator,
                    share_out.percent,
                    share_out.ci_percent,
                    rule.state,
                    tally.domain().state,
                )
            )
            log.info("%s", outcomes[-1])
    return outcomes


def table(outcomes: list[SlideOutcome]) -> str:
    lines = [
        "| blasts composed | fields | cells counted | blasts measured (95% CI) | rule | expected | domain |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        mark = "" if o.state in (o.expected, "indeterminate") else " **WRONG**"
        lines.append(
            f"| {o.true_percent:.0f}% | {o.fields} | {o.counted} | {o.blast_percent:.1f}% "
            f"({o.ci[0]:.1f}-{o.ci[1]:.1f}) | {o.state}{mark} | {o.expected} | {o.domain} |"
        )
    return "\n".join(lines)


def summary(outcomes: list[SlideOutcome]) -> dict:
    high = [o for o in outcomes if o.true_percent >= 30]
    low = [o for o in outcomes if o.true_percent <= 10]
    return {
        "slides": len(outcomes),
        "at_or_above_30_positive": f"{sum(o.state == 'positive' for o in high)}/{len(high)}",
        "at_or_below_10_negative": f"{sum(o.state == 'negative' for o in low)}/{len(low)}",
        "wrong_calls": sum(o.state not in (o.expected, "indeterminate") for o in outcomes),
        "mean_abs_error_points": round(float(np.mean([abs(o.blast_percent - o.true_percent) for o in outcomes])), 2),
    }
