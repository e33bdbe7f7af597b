"""``foundry-gateway compile``: checks before anything heavy starts (architecture, disk, RAM), then a real compile
of a tiny random Hugging Face checkpoint this test makes, registered and served by the real runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.curation.compile import CompileError, check_room, plan
from tests.helpers import ROOT, GatewayProcess, require_module

BUILDER = ROOT / ".venv-model" / "bin" / "python"


def fake_checkpoint(folder: Path, architecture: str, weights: int = 4_000_000) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "torch_dtype": "float32",
                                                    "max_position_embeddings": 4096}))
    (folder / "model.safetensors").write_bytes(b"\0" * weights)
    return folder


def test_plan_estimates_from_the_checkpoint(tmp_path: Path) -> None:
    planned = plan(fake_checkpoint(tmp_path / "hf", "Qwen2ForCausalLM"), "int4", ["Qwen2ForCausalLM"])
    assert planned.parameters == 1_000_000 and planned.context_length == 4096
    assert planned.output_bytes == 600_000 and planned.ram_bytes == 4_600_000


def test_unsupported_architecture_lists_the_supported(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"BertModel is not one .* Supported: LlamaForCausalLM, Qwen2ForCausalLM"):
        plan(fake_checkpoint(tmp_path / "hf", "BertModel"), "int4", ["LlamaForCausalLM", "Qwen2ForCausalLM"])


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"no config\.json"):
        plan(tmp_path, "int4", ["Qwen2ForCausalLM"])


def test_disk_and_ram_checked_before_starting(tmp_path: Path) -> None:
    planned = plan(fake_checkpoint(tmp_path / "hf", "Qwen2ForCausalLM"), "fp32", ["Qwen2ForCausalLM"])
    with pytest.raises(CompileError, match="Not enough RAM: converting needs about"):
        check_room(planned, tmp_path / "out", available_ram=1000)
    huge = plan(fake_checkpoint(tmp_path / "big", "Qwen2ForCausalLM", weights=1), "fp32", ["Qwen2ForCausalLM"])
    huge = huge.__class__(**{**huge.__dict__, "disk_bytes": 10**18})
    with pytest.raises(CompileError, match="Not enough disk"):
        check_room(huge, tmp_path / "out", available_ram=10**12)


# --- a real compile with the model builder (make builder) ------------------------------------------------------


def cli(*args: str, registry: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_REGISTRY_PATH": str(registry), "CI": "true"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUILDER.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{BUILDER} is missing: `make builder` installs the model builder")
        pytest.skip("no model builder venv (make builder)")
    folder = tmp_path_factory.mktemp("hf") / "tiny-hf"
    subprocess.run([str(BUILDER), "scripts/make_tiny_model.py", "--hf-only", "--out", str(folder), "--seed", "99"],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    return folder


@pytest.fixture()
def compiled(checkpoint: Path, tmp_path: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    registry = tmp_path / "models.json"  # none yet: compile starts it
    # no --python: the builder `make builder` installs is found where it put it (issue 32, item 3)
    done = cli("compile", str(checkpoint), "--name", "tiny-compiled", "--precision", "int4", "--file",
               str(registry), registry=registry)
    yield registry, done


def test_compile_registers_a_model_the_runtime_serves(compiled: tuple[Path, subprocess.CompletedProcess[str]],
                                                      checkpoint: Path, tmp_path: Path) -> None:
    require_module("foundry_local_sdk")
    registry, done = compiled
    assert done.returncode == 0, done.stderr
    assert "Qwen2ForCausalLM" in done.stderr and "built" in done.stderr
    entry = json.loads(registry.read_text())[0]
    assert entry["name"] == "tiny-compiled" and entry["upstream_id"] == "tiny-compiled-generic-cpu:1"
    assert entry["context_length"] == 2048 and entry["path"] == "models/tiny-compiled" and entry["min_ram_gb"] > 0
    folder = tmp_path / "models" / "tiny-compiled"
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path / "cache"),
           "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}
    with GatewayProcess(registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready(90)
        body = {"model": "tiny-compiled", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    again = cli("compile", str(checkpoint), "--name", "tiny-compiled", "--file", str(registry),
                registry=registry)
    assert again.returncode == 1 and "already in" in again.stderr  # a second compile never clobbers the first


def test_unsupported_checkpoint_is_refused_before_building(tmp_path: Path) -> None:
    if not BUILDER.exists():
        pytest.fail(f"{BUILDER} is missing: `make builder`") if os.environ.get("CI") == "true" else pytest.skip("")
    hf = fake_checkpoint(tmp_path / "bert", "BertModel")
    registry = tmp_path / "models.json"
    done = cli("compile", str(hf), "--name", "bert", "--file", str(registry), "--python", str(BUILDER),
               registry=registry)
    assert done.returncode == 1 and "BertModel is not one" in done.stderr and "Qwen2ForCausalLM" in done.stderr
    assert not registry.exists() and not (tmp_path / "models" / "bert").exists()


def test_nothing_of_the_users_is_replaced(tmp_path: Path) -> None:
    from app.curation.compile import check_target

    hf = fake_checkpoint(tmp_path / "hf", "Qwen2ForCausalLM")
    registry = tmp_path / "models.json"
    for name in ("..", "a/b", "", "-x"):
        with pytest.raises(CompileError, match="--name"):
            check_target(name, hf, tmp_path / "out", registry, force=True)
    for out in (hf, tmp_path, hf.parent):
        with pytest.raises(CompileError, match="holds the checkpoint or the registry"):
            check_target("ok", hf, out, registry, force=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(CompileError, match="exists; pass --force"):
        check_target("ok", hf, notes, registry, force=False)
    with pytest.raises(CompileError, match="not a model folder"):
        check_target("ok", hf, notes, registry, force=True)
    model = tmp_path / "old-model"
    model.mkdir()
    (model / "genai_config.json").write_text("{}")
    check_target("ok", hf, model, registry, force=True)  # a model folder may be replaced


def test_weights_are_counted_once(tmp_path: Path) -> None:
    hf = fake_checkpoint(tmp_path / "hf", "Qwen2ForCausalLM", weights=4000)
    (hf / "pytorch_model.bin").write_bytes(b"\0" * 4000)  # the same weights in the other format
    (hf / "optimizer.pt").write_bytes(b"\0" * 9000)
    assert plan(hf, "fp32", ["Qwen2ForCausalLM"]).parameters == 1000
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 8000}}))
    assert plan(hf, "fp32", ["Qwen2ForCausalLM"]).parameters == 2000
