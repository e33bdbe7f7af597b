"""Managed mode: the gateway runs Foundry Local itself, in a supervised child process.

The child (``app.upstream.foundry_runner``) binds a private loopback port (port 0; the real URL comes
back on its stdout), registers the registry's local model folders and serves the OpenAI-compatible
API. The supervisor health-checks it, restarts it with exponential backoff when it dies or stops
answering (telling the gateway the new URL: the port changes), and stops it with the gateway — the
whole process group, so no runtime is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    model_id: str
    path: str
    task: str = "chat-completion"


class ManagedFoundryError(RuntimeError):
    pass


class ManagedFoundry:
    def __init__(
        self,
        cache_dir: Path,
        models: list[LocalModelSpec],
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        health_interval: float = 2.0,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        python: str = sys.executable,
        log: logging.Logger | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.models = models
        self.host = host
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.backoff_min, self.backoff_max = restart_backoff
        self.python = python
        self.log = log or logging.getLogger("foundry_gateway.managed")
        self.url = ""
        self.restarts = 0
        self.on_restart: list[Callable[[str], None]] = []
        self.ready_info: dict[str, object] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> str:
        """Spawn the runtime and wait for its ready line; returns its base URL."""
        self._stopping = False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        spec = self.cache_dir / "gateway-models.json"
        spec.write_text(json.dumps([asdict(m) for m in self.models], indent=2))
        env = {**os.environ, "CI": "true", "ORT_TELEMETRY_DISABLED": "1", "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "app.upstream.foundry_runner", "--cache-dir", str(self.cache_dir),
            "--host", self.host, "--port", "0", "--models-file", str(spec),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: stop() reaches anything it spawns
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        try:
            info = await asyncio.wait_for(self._read_ready(), self.start_timeout)
        except (TimeoutError, ManagedFoundryError) as exc:
            await self.stop()
            raise ManagedFoundryError(f"Foundry Local did not start: {exc or 'timed out'}") from None
        self.url = str(info["url"])
        self.ready_info = info
        for problem in info.get("errors") or []:  # type: ignore[attr-defined]
            self.log.error("registering %s failed: %s", problem.get("model_id"), problem.get("message"))
        self.log.info("Foundry Local ready at %s (pid %s) in %.2fs; registered %s, reused %s", self.url,
                      self.pid, time.perf_counter() - started, info.get("registered"), info.get("reused"))
        self._drain = asyncio.ensure_future(self._drain_output())
        return self.url

    async def _read_ready(self) -> dict[str, object]:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                raise ManagedFoundryError(f"the runtime exited with {await self._proc.wait()}")
            text = line.decode(errors="replace").strip()
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(text)
                    if event.get("event") == "ready":
                        return event  # type: ignore[no-any-return]
                    if event.get("event") == "error":
                        raise ManagedFoundryError(str(event.get("message")))
            if text:
                self.log.info("foundry-local: %s", text)

    async def _drain_output(self) -> None:
        """Keep reading the child's output so its pipe never fills (and log it)."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self.log.debug("foundry-local: %s", text)

    async def healthy(self) -> bool:
        if not self.is_running:
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(f"{self.url}/status")).status_code < 500
        except httpx.HTTPError:
            return False

    async def run_supervisor(self) -> None:
        """Health-check forever; restart with exponential backoff after an exit or 3 failed checks."""
        failures = 0
        backoff = self.backoff_min
        while not self._stopping:
            await asyncio.sleep(self.health_interval if self.is_running else 0.05)
            if self._stopping:
                return
            if await self.healthy():
                failures, backoff = 0, self.backoff_min
                continue
            failures += 1
            if self.is_running and failures < 3:
                continue
            self.log.warning("Foundry Local is %s; restarting in %.1fs",
                             "down" if not self.is_running else "not answering", backoff)
            await self._terminate()
            await asyncio.sleep(backoff)
            try:
                url = await self.start()
            except ManagedFoundryError as exc:
                self.log.error("restart failed: %s", exc)
                backoff = min(self.backoff_max, backoff * 2)
                continue
            self.restarts += 1
            failures, backoff = 0, self.backoff_min
            for callback in self.on_restart:
                callback(url)

    async def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the runtime left in its group
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the runtime and everything in its process group. Idempotent."""
        self._stopping = True
        await self._terminate(timeout)
