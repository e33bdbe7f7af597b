"""Managed mode: the gateway runs Foundry Local itself, in a supervised child process.

The child (``app.upstream.foundry_runner``) binds a private loopback port (port 0; the real URL comes
back on its stdout), registers the registry's local model folders and serves the OpenAI-compatible
API. The supervisor health-checks it, restarts it with exponential backoff when it dies or stops
answering (telling the gateway the new URL: the port changes), and stops it with the gateway — the
whole process group, so no runtime is left behind. Requests that meet a dead runtime wait for its
replacement (``recovered``) instead of failing: a crash costs them about a second, not an error.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from app.core.portable import process_group, stop_tree


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    model_id: str
    path: str
    task: str = "chat-completion"


class ManagedFoundryError(RuntimeError):
    pass


class ManagedFoundry:
    """The runtime child process and its supervisor.

    The supervisor never gives up: it notices an exit at once (it waits on the process) and a hang
    within three health checks, restarts at once the first time and with capped exponential backoff
    after that (the count resets once a runtime has run ``stable_after`` seconds), and keeps trying
    through failed restarts. ``on_down`` and ``on_restart`` tell the gateway, so readiness, routing
    and the circuit breaker follow.
    """

    def __init__(
        self,
        cache_dir: Path,
        models: list[LocalModelSpec],
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        health_interval: float = 2.0,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        stable_after: float = 30.0,
        runner: Sequence[str] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.models = models
        self.host = host
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.backoff_min, self.backoff_max = restart_backoff
        self.stable_after = stable_after
        self.runner = list(runner or [sys.executable, "-m", "app.upstream.foundry_runner"])
        self.log = log or logging.getLogger("foundry_gateway.managed")
        self.url = ""
        self.restarts = 0
        self.restart_failures = 0
        self.serving = False
        self.last_error = ""
        self.on_down: list[Callable[[str], None]] = []
        self.on_restart: list[Callable[[str], None]] = []
        self.on_restart_failed: list[Callable[[str], None]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._last_start_ok = False  # whether the runtime being watched got as far as ready
        self._stopping = False
        self._poked = asyncio.Event()
        self._serving_waiters: list[asyncio.Future[None]] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # --- one runtime ---------------------------------------------------------------------------------

    async def start(self) -> str:
        """Spawn the runtime and wait for its ready line; returns its base URL. A failed start leaves no child."""
        self._stopping = False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        spec = self.cache_dir / "gateway-models.json"
        spec.write_text(json.dumps([asdict(m) for m in self.models], indent=2))
        env = {**os.environ, "CI": "true", "ORT_TELEMETRY_DISABLED": "1", "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self._proc = await asyncio.create_subprocess_exec(
            *self.runner, "--cache-dir", str(self.cache_dir), "--host", self.host, "--port", "0",
            "--models-file", str(spec),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            **process_group(),  # its own process group: stopping it reaches anything it spawns
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        try:
            info = await asyncio.wait_for(self._read_ready(), self.start_timeout)
        except (TimeoutError, ManagedFoundryError) as exc:
            self._last_start_ok = False
            await self._terminate()
            self.last_error = f"Foundry Local did not start: {exc or 'timed out'}"
            raise ManagedFoundryError(self.last_error) from None
        except BaseException:
            self._last_start_ok = False
            await self._terminate()
            raise
        self.url = str(info["url"])
        self._started_at = time.monotonic()
        self._last_start_ok = True
        self.serving = True
        self.last_error = ""
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

    # --- supervision ---------------------------------------------------------------------------------

    async def run_supervisor(self) -> None:
        """Watch the runtime and restart it, for as long as the gateway runs."""
        attempts = 0  # restarts since the runtime last ran stably
        while not self._stopping:
            try:
                reason = await self._watch()
                if self._stopping:
                    return
                if self._last_start_ok and time.monotonic() - self._started_at >= self.stable_after:
                    attempts = 0  # it had run stably: this is a new crash, not the same failing start
                self._mark_down(reason)
                await self._terminate()
                delay = 0.0 if attempts == 0 else min(self.backoff_max, self.backoff_min * 2 ** (attempts - 1))
                attempts += 1
                self.log.warning("Foundry Local %s; restarting%s", reason, f" in {delay:.1f}s" if delay else " now")
                if delay:
                    await asyncio.sleep(delay)
                try:
                    url = await self.start()
                except ManagedFoundryError as exc:
                    self.restart_failures += 1
                    self.log.error("restart %d failed: %s (the supervisor keeps trying)", attempts, exc)
                    for callback in self.on_restart_failed:
                        callback(str(exc))
                    continue
                self.restarts += 1
                for callback in self.on_restart:
                    callback(url)
                self._wake_waiters()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave the gateway without a runtime for good
                self.log.exception("supervisor error; retrying in %.1fs", self.backoff_max)
                await asyncio.sleep(self.backoff_max)

    async def _watch(self) -> str:
        """Until the runtime needs a restart; returns why. An exit is seen at once, a hang in 3 checks."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return f"exited ({_exit_text(proc)})" if proc else "is not running"
        exited = asyncio.ensure_future(proc.wait())  # one waiter per runtime, not one per health check
        failed = 0
        try:
            while True:
                poked = asyncio.ensure_future(self._poked.wait())
                try:
                    await asyncio.wait((exited, poked), timeout=self.health_interval,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    poked.cancel()
                self._poked.clear()
                if self._stopping:
                    return "is stopping"
                if proc.returncode is not None:
                    return f"exited ({_exit_text(proc)})"
                if await self.healthy():
                    failed = 0
                    self._wake_waiters()  # requests that met a passing glitch go on
                    continue
                failed += 1
                if failed >= 3:
                    return "stopped answering health checks"
        finally:
            exited.cancel()

    def _mark_down(self, reason: str) -> None:
        self.serving = False
        self.last_error = f"Foundry Local {reason}"
        for callback in self.on_down:
            callback(self.last_error)

    def _wake_waiters(self) -> None:
        waiters, self._serving_waiters = self._serving_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def recovered(self, timeout: float) -> bool:
        """After a failed call: True once a runtime answers — this one (the failure was passing) or the
        supervisor's replacement; False after ``timeout``."""
        if self.serving and await self.healthy():
            return True
        self._poked.set()  # the supervisor checks now instead of at its next health check
        waiter = asyncio.get_running_loop().create_future()
        self._serving_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in self._serving_waiters:
                self._serving_waiters.remove(waiter)
        return True

    # --- stopping --------------------------------------------------------------------------------------

    async def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            stop_tree(proc.pid, force=False)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                stop_tree(proc.pid, force=True)
                await proc.wait()
        stop_tree(proc.pid, force=True)  # anything the runtime left in its group
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the runtime and everything in its process group, for good. Idempotent."""
        self._stopping = True
        self._poked.set()
        self.serving = False
        await self._terminate(timeout)


def _exit_text(proc: asyncio.subprocess.Process) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"code {code}"
