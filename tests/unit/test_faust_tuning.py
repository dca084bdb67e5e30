"""Fails loudly when a Faust upgrade moves what worker/faust_tuning.py relies on."""

from __future__ import annotations

import gc

import aiokafka
import faust
import pytest

from worker import faust_tuning


# a Faust app made outside a worker leaves an event loop of its own behind
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_worker_consumer_gets_the_configured_fetch_wait() -> None:
    app = faust.App("tuning-test", broker="kafka://127.0.0.1:1")
    faust_tuning.install(app, fetch_max_wait_ms=7)
    assert isinstance(app.transport, faust_tuning.Transport)
    consumer = app.consumer
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, faust_tuning._ConsumerThread)
    created = thread._create_worker_consumer(app.transport)
    try:
        assert isinstance(created, aiokafka.AIOKafkaConsumer)
        assert created._fetch_max_wait_ms == 7
    finally:
        await created.stop()
        del app, consumer, thread, created
        gc.collect()  # the leaked loop is reported here, under this test's filters
