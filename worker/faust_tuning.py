"""The one place that reaches into Faust's internals (faust-streaming pinned in pyproject).

Faust 0.15.3 hard-codes `fetch_max_wait_ms=1500` for the worker's consumer. On Kafka a
fetch returns as soon as data arrives, so that only costs idle polls; on brokers that hold
a fetch for most of the wait (tansu), it is the latency floor of every message. The
worker's consumer is created through Faust's own extension point (the transport's
`Consumer` class and its consumer thread) with the wait from the settings.

tests/unit/test_faust_tuning.py fails loudly if a Faust upgrade moves any of this.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.app.conf.secure_session_fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """Faust's aiokafka transport with the worker's consumer."""

    Consumer = _Consumer


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Use the tuned transport for `app` (call right after creating it)."""
    app.conf.secure_session_fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = Transport(app.conf.broker_consumer, app)
