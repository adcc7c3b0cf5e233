"""The technician's view on a terminal: one line per field, then the report. Writes to the stream
it is given (the CLI's stdout); library code elsewhere logs."""

from __future__ import annotations

from typing import Any, TextIO


def fmt_rule(rule: Any) -> str:
    if rule.state == "indeterminate" and rule.cells_to_settle:
        return f"{rule.id}: indeterminate (~{rule.cells_to_settle} more cells)"
    return f"{rule.id}: {rule.state}"


class LiveConsole:
    """The technician's view on a terminal: one line per field, then the report."""

    def __init__(self, out: TextIO, total: int | None, quiet: bool = False) -> None:
        self.out, self.total, self.quiet = out, total, quiet
        self.seen = 0

    def field(self, result: Any, tally: Any) -> None:
        self.seen += 1
        if self.quiet:
            return
        of = f"/{self.total}" if self.total else ""
        key = [r for r in tally.rule_states() if r.state != "not_applicable"][:1]
        rule = f"  {fmt_rule(key[0])}" if key else ""
        self.out.write(
            f"[{self.seen:>3}{of}] {result.source[:28]:<28} cells {len(result.cells):>2} "
            f"(countable {len(result.countable_cells):>2})  total {tally.denominator}/{tally.target_count}"
            f"  {result.timings_ms['detect'] + result.timings_ms['classify']:.0f} ms{rule}\n"
        )
        self.out.flush()

    def skip(self, name: str, reason: str, tally: Any) -> None:
        self.seen += 1
        if not self.quiet:
            self.out.write(f"[{self.seen:>3}] SKIPPED {reason}\n")
            self.out.flush()

    def report(self, run: Any, untrained: bool) -> None:
        tally, w = run.tally, self.out.write
        w(
            f"\nslide {run.slide.slide_id}: {tally.fields} fields counted, {len(tally.skipped)} skipped, "
            f"{tally.cells_detected} cells detected, {tally.denominator} counted, "
            f"{tally.not_countable} not countable\n"
        )
        w(f"{'class':<28}{'n':>5}{'%':>8}   {int(tally.confidence * 100)}% interval\n")
        for s in tally.shares():
            if s.count:
                low, high = s.ci_percent
                w(f"{s.name:<28}{s.count:>5}{s.percent:>8.1f}   {low:5.1f} - {high:5.1f}\n")
        for r in tally.rule_states():
            w(f"rule {r.id:<14} {r.state:<15} {r.note}\n")
        domain = tally.domain()
        if domain.shifted:
            w(f"WARNING: {domain.sentence()}; every rule held at indeterminate\n")
        elif domain.state == "ok":
            w(
                f"domain check: {domain.sentence()} (colour distance {domain.colour_distance:.2f}, "
                f"mean confidence {domain.mean_confidence:.2f})\n"
            )
        size = tally.size.check()
        w(size.summary() + "\n")
        for s in tally.skipped:
            w(f"skipped {s.reason}\n")
        w(f"{tally.rules.disclaimer}\n")
        if untrained:
            w("NOTE: the model bundle is UNTRAINED (random weights): the counts only exercise the system.\n")
        self.out.flush()

    def say(self, line: str) -> None:
        """A line about the run itself (broker, display, slides begun and resumed)."""
        self.out.write(line + "\n")
        self.out.flush()
