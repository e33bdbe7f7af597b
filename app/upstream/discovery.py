"""External mode without ``GATEWAY_UPSTREAM_URL``: where the Foundry Local service runs, as its CLI says."""

from __future__ import annotations

import shutil
import subprocess


def discover_foundry_url() -> str | None:
    """Ask the ``foundry`` CLI where the service runs (its port can change between restarts).

    Foundry Local CLI 0.10 renamed ``foundry service`` to ``foundry server``; both are asked, newest first.
    """
    exe = shutil.which("foundry")
    if exe is None:
        return None
    for command in ("server", "service"):
        try:
            out = subprocess.run([exe, command, "status"], capture_output=True, text=True, timeout=15).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for word in out.split():
            if word.startswith("http://") or word.startswith("https://"):
                return word.rstrip("/.").removesuffix("/openai/status")
    return None

