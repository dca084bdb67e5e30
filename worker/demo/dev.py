"""`secure-session dev`: embedded broker, demo Authorization API, a worker and demo traffic.

Shows decisions live (worker/demo/view.py), or prints each one (no terminal, `--lines`).
Ctrl-C (or --duration) stops everything it started.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import yaml
from rich.console import Console
from rich.live import Live

from worker.demo.authapi import AuthorizationAPI, RunningAPI
from worker.demo.broker import EmbeddedBroker, stop_process
from worker.demo.traffic import print_line, run_traffic
from worker.demo.view import DevView

API_KEY = "demo-api-key"
DEV_FINGERPRINT_KEY = "secure-session dev mode fingerprint key: not secret"


def demo_config(api_url: str) -> dict[str, object]:
    return {
        "bots": [
            {
                "Name": "securebot",
                "Organization": "acme",
                "Id": "sbIuyRQdU",
                "SecureSession": True,
                "SecureSessionConfig": {
                    "Type": "baas",
                    "ValidationInterval": 10,
                    "ApiAlias": "SecureSessionBaaS",
                    "FailureMode": "closed",
                    "ErrorMessage": "Please sign in again.",
                },
            },
            {"Name": "faqbot", "Organization": "acme", "SecureSession": False},
        ],
        "connectors": [
            {
                "Type": "api-connector",
                "Alias": "SecureSessionBaaS",
                "Organization": "acme",
                "Method": "POST",
                "Endpoint": api_url,
                "Headers": {"Authorization": "srn:vault::acme:secret:my-authorization-api-key"},
                "RequestMapping": {
                    "tokenToVerify": {
                        "type": "requestBody",
                        "requestBodyPath": "$.token",
                        "inputPath": "$.secureTokenForUser",
                    }
                },
                "ResponseMapping": {},
                "Body": {},
            }
        ],
    }


async def _live(view: DevView, svg: Path | None, traffic: Awaitable[int]) -> int:
    """Run `traffic` under a live view; save its last frame to `svg` if given."""
    with Live(view.render(), refresh_per_second=4, transient=False) as live:
        task = asyncio.ensure_future(traffic)
        while not task.done():
            live.update(view.render())
            await asyncio.wait({task}, timeout=0.25)
        live.update(view.render())
    if svg is not None:
        console = Console(record=True, width=110, file=io.StringIO())
        console.print(view.render())
        console.save_svg(str(svg), title="secure-session dev")
    return task.result()


async def run_async(
    duration: float | None, rate: float, live: bool, svg: Path | None = None
) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="secure-session-dev-"))
    (tmp / "secrets" / "acme").mkdir(parents=True)
    (tmp / "secrets" / "acme" / "my-authorization-api-key").write_text(API_KEY + "\n")
    api = AuthorizationAPI(
        API_KEY,
        tokens={"valid-token-alice": "alice", "valid-token-bob": "bob"},
        default_delay_s=0.1,
    )
    server = await RunningAPI(api).start()
    view = DevView(lambda: sum(api.calls.values())) if live else None
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config(server.url), sort_keys=False))
    print(f"demo Authorization API on {server.url}; config in {config}")
    broker = EmbeddedBroker().start()
    print(f"embedded broker (tansu) on {broker.bootstrap}")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SECURE_SESSION_CONFIG": str(config),
        "SECURE_SESSION_SECRETS_DIR": str(tmp / "secrets"),
        "SECURE_SESSION_DATA_DIR": str(tmp / "data"),
        "SECURE_SESSION_WEB_ENABLED": "0",
        "SECURE_SESSION_ALLOW_INSECURE_ENDPOINTS": "1",
        "SECURE_SESSION_LOG_LEVEL": "info",
        # dev mode's stable default: fingerprints comparable from run to run (not secret)
        "SECURE_SESSION_FINGERPRINT_KEY": DEV_FINGERPRINT_KEY,
        "KAFKA_SESSION_TIMEOUT_S": "2",
        "KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
        "KAFKA_REBALANCE_TIMEOUT_S": "2",
        "KAFKA_PRODUCER_MAX_BATCH_SIZE": "16",
        "KAFKA_FETCH_MAX_WAIT_MS": "10",
    }
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, not awaited
        [sys.executable, "-m", "worker", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C is ours to handle: the worker first, then the broker
    )
    failed = False
    print(f"worker pid {worker.pid}, log in {tmp / 'worker.log'}; Ctrl-C stops everything\n")
    try:
        print("waiting for the worker to join its group and load its configuration...")
        deadline = time.monotonic() + 90
        while b"configuration ready" not in (tmp / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                print(f"worker did not start; see {tmp / 'worker.log'}")
                failed = True
                return 1
            await asyncio.sleep(0.2)
        client = {"bootstrap_servers": broker.bootstrap}

        def alive() -> bool:
            return worker.poll() is None

        if view is None:
            shown = await run_traffic(client, duration, rate, print_line, alive)
        else:
            shown = await _live(view, svg, run_traffic(client, duration, rate, view.feed, alive))
        if worker.poll() is not None:
            print(f"worker exited with {worker.returncode}; see {tmp / 'worker.log'}")
            failed = True
            return 1
        print(f"\n{shown} decisions shown; Authorization API calls: {sum(api.calls.values())}")
        return 0
    finally:
        # in this order: the worker leaves its group while the broker is still there
        stop_process(worker, timeout_s=10)
        log.close()
        broker.stop()
        await server.stop()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)


def run(
    duration: float | None = None,
    rate: float = 3.0,
    live: bool | None = None,
    svg: Path | None = None,
) -> int:
    """`live`: the rich view (default: when stdout is a terminal), else one line a decision."""
    try:
        return asyncio.run(
            run_async(duration, rate, sys.stdout.isatty() if live is None else live, svg)
        )
    except KeyboardInterrupt:
        print("\nstopped")
        return 0  # stopping is what Ctrl-C asks for: not an error
