"""Event backbone settings (CRM_EVENTS_*), kept apart from `ServiceSettings` so every service gets them unchanged.

The defaults suit production; tests shorten the waits. Every value is a number of seconds unless named otherwise.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_kit.events.subjects import check_namespace


class EventSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_EVENTS_", extra="ignore")

    # Prefix of every subject and stream name (see `crm_kit.events.subjects`).
    namespace: str = ""

    # Streams. The duplicate window is how long JetStream remembers a Nats-Msg-Id: a relay that crashed between
    # publishing and marking its rows re-publishes within seconds, far inside two minutes.
    duplicate_window: float = 120.0
    stream_max_age: float = 7 * 24 * 3600.0
    dead_letter_max_age: float = 30 * 24 * 3600.0
    stream_replicas: int = 1

    # Connection: bounded retries at start-up (a missing NATS is a deployment error to surface), then reconnect
    # forever (a NATS restart must not take the service down).
    connect_timeout: float = 2.0
    connect_attempts: int = 10
    reconnect_wait: float = 1.0

    # Relay.
    relay_batch_size: int = 256
    # Safety net for writes the wake-ups miss (another replica's commit when NOTIFY was lost, e.g.).
    relay_poll_interval: float = 1.0
    relay_ack_timeout: float = 5.0
    relay_max_backoff: float = 10.0
    # Published outbox rows are kept this long for debugging, then deleted by the active relay.
    outbox_retention: float = 24 * 3600.0
    # Inbox rows must outlive any redelivery or replay of the stream, so they live as long as stream messages.
    inbox_retention: float = 7 * 24 * 3600.0
    prune_interval: float = 60.0

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        return check_namespace(value)
