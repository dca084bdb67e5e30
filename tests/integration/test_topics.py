"""Topic bootstrap: created when allowed, explained (what and how) when not."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.conftest import Broker
from worker.errors import TopicSetupError
from worker.kafka import changelog_topic, ensure_topics
from worker.settings import Settings, Topics

pytestmark = pytest.mark.integration


def _settings(broker: Broker, create: bool, name: str) -> Settings:
    env = broker.client_env() | {
        "SECURE_SESSION_APP_ID": f"app-{name}",
        "SECURE_SESSION_PARTITIONS": "3",
        "SECURE_SESSION_CREATE_TOPICS": "1" if create else "0",
    }
    topics = Topics(*(f"{name}.{t}" for t in ("in", "allowed", "blocked", "audit", "bots", "conn")))
    s = Settings.from_env(env)
    return Settings(**{**{f: getattr(s, f) for f in s.__slots__}, "topics": topics})


def test_missing_topics_are_listed_with_how_to_create_them(broker: Broker) -> None:
    name = uuid.uuid4().hex[:8]
    refused = _settings(broker, create=False, name=name)
    with pytest.raises(TopicSetupError) as err:
        asyncio.run(ensure_topics(refused))
    text = str(err.value)
    assert "9 topics missing" in text and "SECURE_SESSION_CREATE_TOPICS is off" in text
    assert f"--topic {name}.in --partitions 3 --replication-factor 1\n" in text
    assert (
        f"--topic {name}.bots --partitions 1 --replication-factor 1 --config cleanup.policy=compact"
        in text
    )
    assert f"--topic {changelog_topic(refused)} --partitions 3" in text

    assert asyncio.run(ensure_topics(_settings(broker, create=True, name=name)))[f"{name}.in"] == 3
    # once they exist, a worker that may not create topics starts
    assert asyncio.run(ensure_topics(refused)) == {
        f"{name}.{t}": 3 for t in ("in", "allowed", "blocked", "audit")
    }
