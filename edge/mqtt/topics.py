"""The topic tree (DESIGN section 6): marrow/v1/<device_id>/..."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def gate(self) -> str:
        """Field-gate decisions of a live camera (not retained): what the display flashes."""
        return f"{self.root}/gate"

    @property
    def preview(self) -> str:
        """Small JPEGs for the display (QoS 0, newest wins); the lab bridge never forwards it."""
        return f"{self.root}/preview"

    @property
    def current(self) -> str:
        """The slide being counted or the last one finished (retained): what a dashboard shows."""
        return f"{self.root}/current"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def commands(self) -> str:
        """Subscription filter for every command verb (one level: replies do not match)."""
        return f"{self.root}/cmd/+"

    def command_reply(self, verb: str) -> str:
        return f"{self.root}/cmd/{verb}/reply"

    def field(self, slide_id: str) -> str:
        return f"{self.root}/slide/{slide_id}/field"

    def tally(self, slide_id: str) -> str:
        return f"{self.root}/slide/{slide_id}/tally"

    def report(self, slide_id: str) -> str:
        return f"{self.root}/slide/{slide_id}/report"

    def slide_topic(self, slide_id: str, kind: str) -> str:
        """``slide/<slide_id>/<kind>``: review (a technician's change), signed (the signed report)."""
        return f"{self.root}/slide/{slide_id}/{kind}"
