"""In-memory publisher for unit tests: the same interface as MqttPublisher, no broker."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass
class Published:
    topic: str
    message: BaseModel
    retain: bool


@dataclass
class MemoryPublisher:
    sent: list[Published] = field(default_factory=list)
    closed: bool = False
    camera_states: list[tuple[str, str]] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # topics whose retained message was cleared

    def camera_state(self, state: str, detail: str) -> None:
        self.camera_states.append((state, detail))

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None:
        self.sent.append(Published(topic, message, retain))

    def clear_retained(self, topic: str) -> None:
        self.cleared.append(topic)

    def publish_preview(self, message: BaseModel) -> None:
        self.sent.append(Published("preview", message, False))

    def close(self) -> None:
        self.closed = True

    def on(self, suffix: str) -> list[BaseModel]:
        return [p.message for p in self.sent if p.topic.endswith(suffix)]
