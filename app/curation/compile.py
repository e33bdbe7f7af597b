"""``foundry-gateway compile``: a local Hugging Face checkpoint → a Foundry Local model folder → the registry.

Foundry Local serves ONNX Runtime GenAI folders; onnxruntime-genai's model builder makes them from a Hugging
Face checkpoint. The builder needs torch and transformers, which the gateway itself never needs, so it runs as
a subprocess of a Python that has them: ``--python``, else ``$FOUNDRY_GATEWAY_BUILDER_PYTHON``, else the repo's
build venv ``.venv-model`` (``make builder``), else this interpreter (with the ``compile`` extra installed).

Before anything heavy starts, the checkpoint is checked: its architecture against the installed builder's own
list, and the disk and RAM it will take against what this host has. Then the builder runs (its output shown
as it goes), the folder is trimmed to what the runtime reads and given the context length from the config,
and the registry gets an entry (``path``, upstream id, context length, a RAM estimate).

This module imports only the standard library at import time: ``scripts/make_tiny_model.py`` runs
:func:`build_folder` from the build venv, which has no gateway dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, where `make builder` puts .venv-model
PRECISIONS = ("int4", "fp16", "fp32")
PROVIDERS = ("cpu", "cuda", "dml", "webgpu", "NvTensorRtRtx")
KEEP = {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja"}
_BYTES_PER_PARAMETER = {"int4": 0.6, "fp16": 2.0, "fp32": 4.0}  # int4: weights plus scales, embeddings in fp
_ARCHITECTURE = re.compile(r'config\.architectures\[0\] == "(\w+)"')


class CompileError(Exception):
    """A compile that cannot go ahead, said in a sentence."""


@dataclass(frozen=True)
class Plan:
    """What a compile will make and need, known before it starts."""

    architecture: str
    parameters: int
    context_length: int | None
    output_bytes: int
    disk_bytes: int  # output, plus the builder's intermediate copy
    ram_bytes: int  # the checkpoint in fp32 while the builder converts it


def builder_python(explicit: str | None = None) -> str:
    """The Python that runs the model builder (see the module docstring for the order)."""
    if explicit and not Path(explicit).exists():
        raise CompileError(f"--python {explicit}: no such file.")
    for candidate in (explicit, os.environ.get("FOUNDRY_GATEWAY_BUILDER_PYTHON"),
                      *(str(folder / ".venv-model" / _VENV_PYTHON) for folder in (Path.cwd(), CHECKOUT))):
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VENV_PYTHON = Path("Scripts/python.exe") if sys.platform == "win32" else Path("bin/python")


def check_target(name: str, hf_dir: Path, out: Path, registry: Path, *, force: bool) -> None:
    """Refuse what would lose someone's data: an odd name, an output folder that holds the checkpoint or the
    registry, or an existing folder that is not a model (``--force`` replaces only a model folder)."""
    if not _NAME.fullmatch(name):
        raise CompileError(f"--name {name!r}: use letters, digits, '.', '-' and '_' (it names a folder and a model).")
    target, source = out.resolve(), hf_dir.resolve()
    if target == source or target in source.parents or target in registry.resolve().parents:
        raise CompileError(f"{out} holds the checkpoint or the registry: choose another --out.")
    if target.exists():
        if not force:
            raise CompileError(f"{out} exists; pass --force to replace it, or --out DIR.")
        if any(target.iterdir()) and not (target / "genai_config.json").is_file():
            raise CompileError(f"{out} is not a model folder (no genai_config.json): not replacing it.")


def supported_architectures(python: str) -> list[str]:
    """The architectures the installed builder converts, read from its own source."""
    probe = "import onnxruntime_genai.models.builder as b; print(b.__file__)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"{python} could not be asked for the model builder: {exc}") from None
    if found.returncode != 0:
        raise CompileError(
            f"{python} cannot run onnxruntime-genai's model builder ({_last_line(found.stderr)}). Install the "
            "builder: `make builder` (a build venv, .venv-model) or `pip install 'foundry-gateway[compile]'`, or "
            "pass --python PATH.")
    source = Path(found.stdout.strip()).read_text(encoding="utf-8", errors="replace")
    return sorted(set(_ARCHITECTURE.findall(source)))


def read_config(hf_dir: Path) -> dict[str, object]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise CompileError(f"{hf_dir} is not a Hugging Face checkpoint folder: it has no config.json.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CompileError(f"{path} is not a JSON object.")
    return config


def plan(hf_dir: Path, precision: str, supported: list[str]) -> Plan:
    """Check the checkpoint and estimate what the compile needs."""
    config = read_config(hf_dir)
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if architecture not in supported:
        raise CompileError(f"{hf_dir}: architecture {architecture or '(none in config.json)'} is not one the "
                           f"installed model builder converts. Supported: {', '.join(supported)}.")
    weights = _weight_bytes(hf_dir)
    if not weights:
        raise CompileError(f"{hf_dir} has no weights (*.safetensors or *.bin).")
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    parameters = int(weights / (2 if "16" in dtype else 4))
    output = int(parameters * _BYTES_PER_PARAMETER[precision])
    context = config.get("max_position_embeddings")
    return Plan(
        architecture=str(architecture), parameters=parameters,
        context_length=int(context) if isinstance(context, int) else None,
        output_bytes=output, disk_bytes=2 * output + weights, ram_bytes=parameters * 4 + output,
    )


def _weight_bytes(hf_dir: Path) -> int:
    """The checkpoint's weights, counted once: the shard index's total, else the safetensors, else the .bin
    files (a folder may carry both formats; optimizer states are not weights)."""
    for index in (hf_dir / "model.safetensors.index.json", hf_dir / "pytorch_model.bin.index.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(index.read_text())["metadata"]["total_size"])
    for suffix in (".safetensors", ".bin"):
        files = [p for p in hf_dir.iterdir() if p.is_file() and p.suffix == suffix and "optimizer" not in p.name]
        if files:
            return sum(p.stat().st_size for p in files)
    return 0


def check_room(planned: Plan, out: Path, available_ram: int) -> None:
    """Refuse to start a compile this host cannot finish (disk for the output, RAM for the conversion)."""
    existing = out if out.exists() else next((p for p in out.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if planned.disk_bytes > free:
        raise CompileError(f"Not enough disk at {existing}: the compile needs about {_gb(planned.disk_bytes)}, "
                           f"{_gb(free)} is free.")
    if planned.ram_bytes > available_ram:
        raise CompileError(f"Not enough RAM: converting needs about {_gb(planned.ram_bytes)}, "
                           f"{_gb(available_ram)} is available.")


def build_folder(hf_dir: Path, out: Path, *, precision: str, provider: str = "cpu", python: str = sys.executable,
                 extra_options: dict[str, str] | None = None,
                 on_line: Callable[[str], None] = lambda line: None) -> None:
    """Run the model builder and leave in ``out`` just the files Foundry Local reads."""
    build = out.parent / f".{out.name}-build"
    cache = out.parent / f".{out.name}-cache"
    shutil.rmtree(build, ignore_errors=True)
    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(build),
           "-p", precision, "-e", provider, "-c", str(cache)]
    if extra_options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = [*tail[-19:], line]
                on_line(line)
    if proc.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        raise CompileError("The model builder failed:\n" + "\n".join(tail[-8:]))
    if not (build / "genai_config.json").is_file():
        raise CompileError(f"The model builder wrote no genai_config.json in {build}.")
    wanted = KEEP | _referenced(build / "genai_config.json")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for item in sorted(build.iterdir()):
        if item.is_file() and (item.name in wanted or item.name.endswith((".onnx", ".onnx.data"))):
            shutil.copy2(item, out / item.name)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if not (out / name).exists() and (hf_dir / name).exists():
            shutil.copy2(hf_dir / name, out / name)
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if not (out / "tokenizer.json").is_file():
        raise CompileError(f"{hf_dir} has no tokenizer.json (a fast tokenizer): Foundry Local needs one.")


def _referenced(genai_config: Path) -> set[str]:
    """Every file name ``genai_config.json`` points at (encoders, decoders, vision or speech parts)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "filename" and isinstance(value, str):
                    names.add(Path(value).name)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(genai_config.read_text()))
    return names


def set_context_length(out: Path, context_length: int | None) -> int | None:
    """Write the checkpoint's context length into ``genai_config.json`` (what Foundry Local reports and caps)."""
    path = out / "genai_config.json"
    try:
        genai = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompileError(f"{path} cannot be read: {exc}") from None
    if not isinstance(genai.get("model"), dict):
        raise CompileError(f"{path} has no 'model' section.")
    length = context_length or genai["model"].get("context_length")
    if length:
        genai["model"]["context_length"] = length
        genai.setdefault("search", {})["max_length"] = length
        path.write_text(json.dumps(genai, indent=4, sort_keys=True) + "\n")
    return int(length) if length else None


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _gb(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 / 10 else f"{value / 1024**2:.0f} MiB"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
