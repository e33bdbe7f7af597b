"""What differs between Linux, macOS and Windows, in one place: process groups for the managed runtime, the
event loop, and whether the kernel can quick-ACK.

Each function takes the platform as a parameter defaulting to the real one, so every branch is a unit test on
any machine (``os_name="nt"`` is Windows).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import psutil

QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def process_group(os_name: str = os.name) -> dict[str, Any]:
    """Keyword arguments that start a child in its own process group, so stopping it reaches what it spawns."""
    if os_name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    return {"start_new_session": True}


def stop_tree(pid: int, *, force: bool, os_name: str = os.name) -> None:
    """Ask (or force) a process and everything it started to stop. POSIX: its process group; Windows (no
    process groups to signal): the tree as psutil sees it, children first."""
    if os_name != "nt":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)  # type: ignore[attr-defined,unused-ignore]
        return
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.kill() if force else process.terminate()


def event_loop(requested: str = "auto", platform: str = sys.platform) -> str:
    """uvicorn's ``loop``: ``uvloop`` where it is installed and the platform has it (not Windows), else asyncio's."""
    if requested != "auto":
        return requested
    if platform == "win32" or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def can_quickack(quickack: int | None = QUICKACK) -> bool:
    return quickack is not None
