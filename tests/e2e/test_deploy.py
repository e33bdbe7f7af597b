"""deploy/: the compose file and the Kubernetes manifests, validated offline against their schemas
(kubernetes-validate: the Kubernetes OpenAPI schemas it ships; check-jsonschema: the Compose spec's schema it
ships), and every GATEWAY_* setting they use is one the gateway has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from app.core.settings import ENV_PREFIX, Settings
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=120)


def test_kubernetes_manifests_are_valid() -> None:
    assert len(MANIFESTS) >= 2
    done = run("kubernetes-validate", "--strict", *map(str, MANIFESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = set(re.findall(r"passed for resource (\w+)/", done.stdout))
    assert {"deployment", "service", "horizontalpodautoscaler", "statefulset"} <= kinds


def test_compose_file_is_valid() -> None:
    done = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validators_do_catch_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "front.yaml"
    broken.write_text((DEPLOY / "k8s" / "front.yaml").read_text().replace("replicas: 2", "replicaz: 2"))
    assert run("kubernetes-validate", "--strict", str(broken)).returncode != 0
    compose = tmp_path / "docker-compose.yml"
    compose.write_text((DEPLOY / "docker-compose.yml").read_text().replace("restart: unless-stopped",
                                                                           "restart: [sometimes]", 1))
    assert run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(compose)).returncode != 0


def test_every_setting_named_exists() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for path in [*MANIFESTS, DEPLOY / "docker-compose.yml"]:
        for name in re.findall(r"\b(GATEWAY_[A-Z_]+)\b", path.read_text()):
            assert name in known, f"{path.name}: {name} is not a setting"
    assert shutil.which("kubernetes-validate", path=str(BIN)) and shutil.which("check-jsonschema", path=str(BIN))
