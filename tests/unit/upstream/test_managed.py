"""The managed runtime's supervisor on its own, with stand-in runners (shell scripts speaking the runner's
ready/error protocol): it backs off between failed restarts even after a long healthy run, it never
gives up, and requests waiting for it are woken when the runtime turns out to be fine."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from app.upstream.managed import ManagedFoundry

# Starts once (prints a ready line and sleeps), then every later start fails before it is ready.
ONCE_THEN_FAIL = """#!/bin/sh
d=$(dirname "$0")
if [ -e "$d/started" ]; then echo '{"event": "error", "message": "broken host"}'; exit 3; fi
touch "$d/started"
echo '{"event": "ready", "url": "http://127.0.0.1:9", "pid": '$$'}'
exec sleep 600
"""


def runner(tmp_path: Path, script: str) -> list[str]:
    path = tmp_path / "runner.sh"
    path.write_text(script)
    path.chmod(0o755)
    return [str(path)]


def test_failed_restarts_back_off_even_after_a_long_healthy_run(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        managed = ManagedFoundry(tmp_path / "cache", [], runner=runner(tmp_path, ONCE_THEN_FAIL),
                                 health_interval=60, restart_backoff=(0.1, 0.4), stable_after=0.0,
                                 log=logging.getLogger("test"))
        await managed.start()
        supervisor = asyncio.ensure_future(managed.run_supervisor())
        assert managed.pid is not None
        os.kill(managed.pid, signal.SIGKILL)  # it had "run stably" (stable_after=0): the first restart is at once
        failures_seen = []
        for _ in range(30):  # 1.5 s of watching, in 50 ms steps
            await asyncio.sleep(0.05)
            failures_seen.append(managed.restart_failures)
        await managed.stop()
        supervisor.cancel()
        return failures_seen[-1], managed.restarts

    failures, restarts = asyncio.run(scenario())
    # delays 0, 0.1, 0.2, 0.4, 0.4 …: about 6 attempts in 1.5 s; without backoff it spins (≫ 20)
    assert 3 <= failures <= 8, failures
    assert restarts == 0


HEALTHY = """#!/bin/sh
echo '{"event": "ready", "url": "http://127.0.0.1:'"$PORT"'", "pid": '$$'}'
exec sleep 600
"""


def test_waiters_are_woken_when_the_runtime_proves_healthy(tmp_path: Path) -> None:
    """A request that failed on a passing glitch waits in ``recovered``; the supervisor's next good health
    check (not only a restart) lets it go on."""

    async def scenario() -> bool:
        server = await asyncio.start_server(_status_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        os.environ["PORT"] = str(port)
        managed = ManagedFoundry(tmp_path / "cache", [], runner=runner(tmp_path, HEALTHY), health_interval=0.1,
                                 log=logging.getLogger("test"))
        try:
            await managed.start()
            supervisor = asyncio.ensure_future(managed.run_supervisor())
            managed.serving = False  # as if a health check had just failed
            ok = await managed.recovered(timeout=3.0)
            supervisor.cancel()
            return ok and managed.restarts == 0
        finally:
            await managed.stop()
            server.close()
            del os.environ["PORT"]

    assert asyncio.run(scenario())


async def _status_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
    await writer.drain()
    writer.close()
