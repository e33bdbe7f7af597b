"""Real processes for tests: the gateway under test, started like users start it, on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_module(name: str) -> Any:
    """Import a real part the tests need. Missing: skipped on a laptop, a failure under CI=true."""
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{name} is missing under CI=true: {exc} (make install brings it)", pytrace=False)
        pytest.skip(f"{name} not installed")


def require_program(name: str) -> str:
    """The path of a program the tests need. Missing: skipped on a laptop, a failure under CI=true."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is missing under CI=true (make prometheus installs it)", pytrace=False)
        pytest.skip(f"{name} not installed")
    return path


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Wait for a condition (the event itself, polled), bounded by ``timeout``; returns whether it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def write_registry(path: Path, entries: list[dict[str, Any]]) -> Path:
    import json

    path.write_text(json.dumps(entries, indent=2))
    return path


class GatewayProcess:
    """``foundry-gateway serve`` in a subprocess; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        *,
        upstream: str | None = None,
        registry: Path | str = ROOT / "models.json",
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        log_path: Path | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.wrap = wrap or []  # a command the gateway runs under (its own mounts, limits)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.env = {
            **os.environ,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_REGISTRY_PATH": str(registry),
            "GATEWAY_ENV_FILE": "/nonexistent",
            "GATEWAY_REGISTRY_WATCH_INTERVAL": "0.2",
            "GATEWAY_INVENTORY_REFRESH_INTERVAL": "1",
            # each gateway its own state (quota counters, stored responses) unless a test shares one on purpose
            "GATEWAY_STATE_DIR": "",
            "CI": "true",
        }
        if upstream:
            self.env.update(GATEWAY_UPSTREAM_MODE="external", GATEWAY_UPSTREAM_URL=upstream)
        self.env.update(env or {})
        self._state_dir = None
        if not self.env["GATEWAY_STATE_DIR"]:
            self._state_dir = self.env["GATEWAY_STATE_DIR"] = tempfile.mkdtemp(prefix="gateway-state-")
        self.ready_timeout = ready_timeout
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> GatewayProcess:
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=self.env,
            stdout=self._log, stderr=self._log, start_new_session=True,
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway not ready after {self.ready_timeout}s; log: {self.log_path}")

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until /readyz says the upstream is reachable."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/readyz", timeout=2)
            body = response.json()
            if response.status_code == 200:
                return body
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready: {body}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
        if self._state_dir is not None:  # kept across stop() and start(): a restart finds its state
            shutil.rmtree(self._state_dir, ignore_errors=True)


def run_in_terminal(args: list[str], *, columns: int = 80, env: dict[str, str] | None = None,
                    timeout: float = 120) -> str:
    """``foundry-gateway ARGS`` with a pseudo-terminal of ``columns`` as its stdout and stderr: what a person sees
    (colours and cursor codes taken out)."""
    import pty
    import re
    import select

    master, slave = pty.openpty()
    full = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "GATEWAY_ENV_FILE": "/nonexistent", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], stdout=slave, stderr=slave, stdin=slave,
                            cwd=ROOT, env=full)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out.decode("utf-8", "replace"))
