"""Each platform branch, with the platform faked where that is honest (no Windows or macOS machine here): the
supervisor's Windows process handling, the event loop choice, the cgroup reader absent, the transport without
poll(2), and the delayed-ACK fallback's choice."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.core import portable
from app.core.hardware import cgroup_memory_limit, host_memory
from app.core.settings import load_settings
from app.upstream import client
from app.upstream.transport import FastTransport, _SelectPoller


def test_process_group_arguments() -> None:
    assert portable.process_group("posix") == {"start_new_session": True}
    assert portable.process_group("nt") == {"creationflags": 0x200}  # CREATE_NEW_PROCESS_GROUP


@pytest.mark.parametrize("os_name", ["posix", "nt"])
def test_stop_tree_reaches_the_grandchildren(os_name: str) -> None:
    """The Windows branch (psutil's view of the tree) runs on Linux too: it must stop a runtime and what it
    spawned, like the process-group branch."""
    spawn = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);" \
            " print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, text=True,
                            **portable.process_group("posix"))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) == 2
    portable.stop_tree(proc.pid, force=False, os_name=os_name)
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    proc.wait(5)
    assert not alive


def test_event_loop_choice() -> None:
    assert portable.event_loop("auto", "win32") == "asyncio"  # no uvloop on Windows
    assert portable.event_loop("auto", "darwin") == "uvloop"  # installed here, as on macOS with the package
    assert portable.event_loop("asyncio", "linux") == "asyncio"


def test_no_cgroups_means_physical_ram(tmp_path: Path) -> None:
    assert cgroup_memory_limit(root=tmp_path / "no-sys-fs-cgroup", proc_cgroup=tmp_path / "no-proc") is None
    memory = host_memory(None, 1.0)
    assert memory.physical_gb > 0


def test_staleness_check_without_poll() -> None:
    """Windows has no poll(2): the select(2) stand-in says an idle connection went stale the same way."""
    ours, theirs = socket.socketpair()
    try:
        poller = _SelectPoller(ours)
        assert poller.poll(0) == []
        theirs.close()  # the server hung up
        assert poller.poll(0) == [1]
    finally:
        ours.close()


def test_without_quickack_a_loopback_upstream_gets_fresh_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "can_quickack", lambda: False)  # as on macOS and Windows
    managed = client.make_transport(load_settings())
    assert isinstance(managed, FastTransport) and managed.max_idle == 0
    remote = client.make_transport(load_settings(upstream_mode="external", upstream_url="http://10.1.2.3:5273"))
    assert isinstance(remote, FastTransport) and remote.max_idle > 0  # a remote connect costs more: keep-alive
    monkeypatch.setattr(client, "can_quickack", lambda: True)
    assert client.make_transport(load_settings()).max_idle > 0  # type: ignore[attr-defined]


def test_log_records_are_single_lines_tracebacks_included() -> None:
    import logging
    import sys

    from app.core.logs import SingleLineFormatter

    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "problems: %s", ("a\nb",), sys.exc_info())
    line = SingleLineFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "problems: a\\nb" in line and "ValueError: first line\\nsecond line" in line
