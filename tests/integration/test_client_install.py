"""dowse-client installs alone: its wheel requires httpx only (adapters are extras), the resolved install
set holds none of the server's heavy packages, and importing it loads none of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
HEAVY = {"onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "torch", "tantivy",
         "numpy", "sentence-transformers", "transformers", "onnx", "tokenizers"}  # fmt: skip


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel, built from a copy of client/ (no build files left in the tree)."""
    src = tmp_path_factory.mktemp("client-src") / "client"
    shutil.copytree(REPO / "client", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    out = src.parent / "dist"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=240)
    (whl,) = out.glob("dowse_client-*.whl")
    return whl


def test_wheel_requires_httpx_only_and_adapters_are_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
        files = zf.namelist()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    base = {_norm(r.name) for r in reqs if r.marker is None}
    extras = {_norm(r.name): str(r.marker) for r in reqs if r.marker is not None}
    assert base == {"httpx"}
    assert extras == {"langchain-core": 'extra == "langchain"', "llama-index-core": 'extra == "llamaindex"'}
    assert "dowse_client/py.typed" in files and not any(
        f.startswith(("embedder/", "services/")) for f in files
    )


def test_pip_resolves_no_heavy_package(wheel: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report",
           str(report), str(wheel)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    names = {_norm(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert {"dowse-client", "httpx"} <= names and not names & HEAVY, names


def test_import_loads_no_heavy_module() -> None:
    code = (
        "import json, sys, dowse_client; from dowse_client import DowseClient, AsyncDowseClient;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    env_path = str(REPO / "client")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": env_path, "PATH": ""})  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout))
    banned = {"numpy", "onnxruntime", "faiss", "torch", "tantivy", "embedder", "indexer", "gateway",
              "services", "pydantic", "langchain_core", "llama_index"}  # fmt: skip
    assert "httpx" in loaded and not loaded & banned
