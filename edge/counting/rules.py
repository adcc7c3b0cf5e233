"""Diagnostic rules as data: a YAML rule pack evaluated against the running tally."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.counting.intervals import cells_to_settle, wilson
from edge.errors import ConfigError

RuleOutcome = Literal["positive", "negative", "indeterminate", "not_applicable"]


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    label: str
    class_name: str = Field(alias="class")
    above_percent: float = Field(ge=0.0, lt=100.0)
    source: str = ""


class RulePack(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    disclaimer: str
    rules: list[RuleSpec]


@dataclass(frozen=True)
class RuleState:
    id: str
    label: str
    class_name: str
    threshold_percent: float
    percent: float | None
    ci_percent: tuple[float, float] | None
    state: RuleOutcome
    cells_to_settle: int | None
    note: str


def load_rule_pack(path: Path | None = None) -> RulePack:
    """The YAML rule pack at ``path``, or the embedded default."""
    if path is None:
        text = resources.files("edge.counting").joinpath("default_rules.yaml").read_text(encoding="utf-8")
        origin = "embedded default rule pack"
    else:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read rule pack {path}: {exc.strerror}") from None
    try:
        return RulePack.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid rule pack {origin}: {exc}") from None


def evaluate(rule: RuleSpec, k: int, n: int, known_classes: set[str], confidence: float) -> RuleState:
    """positive when the whole interval lies above the threshold, negative when it lies at or
    below it, else indeterminate with the further cells that would settle it."""
    threshold = rule.above_percent / 100.0

    def without_percent(state: RuleOutcome, note: str) -> RuleState:
        return RuleState(rule.id, rule.label, rule.class_name, rule.above_percent, None, None, state, None, note)

    if rule.class_name not in known_classes:
        return without_percent("not_applicable", f"the model bundle has no class {rule.class_name!r}")
    if n == 0:
        return without_percent("indeterminate", "no countable cells yet")
    low, high = wilson(k, n, confidence)
    percent = 100.0 * k / n
    ci = (100.0 * low, 100.0 * high)
    if low > threshold:
        state: RuleOutcome = "positive"
        note = f"{rule.class_name} {percent:.1f}%: interval above {rule.above_percent:g}%"
        more = 0
    elif high <= threshold:
        state, more = "negative", 0
        note = f"{rule.class_name} {percent:.1f}%: interval at or below {rule.above_percent:g}%"
    else:
        state = "indeterminate"
        more = cells_to_settle(k, n, threshold, confidence)
        note = "count more cells" + (f": about {more} more would settle it" if more else "")
    return RuleState(rule.id, rule.label, rule.class_name, rule.above_percent, percent, ci, state, more, note)
