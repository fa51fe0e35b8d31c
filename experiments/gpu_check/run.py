"""Every check that needs a CUDA device, in one run: the GPU tests, the fla / mamba-ssm fast paths against our
torch forms on the device (bf16 included), the kernel census of each model's CUDA decode step (ATen ops and Triton
launches) next to the roofline's charge, batch-1 decode latency of the reference models measured next to the
roofline (and the paper's Table 6), the int32-capped max-batch throughput, and a short bf16 proxy training (tokens/s,
MFU, the kernel path of each operator); results name the device, driver,
CUDA, torch and package versions and the git revision.

    make gpu-check                          # = python -m experiments run gpu_check
    python -m experiments run gpu_check --quick

Without CUDA it prints one line, "no CUDA device", and exits 2 (nothing else runs). It installs nothing: what the
device image lacks travels as wheels (docs/gpu.md). Each part runs even if an earlier one failed; the exit status
is 1 when any part failed. Results: <out>/gpu_check_<gpu>.md and .json.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.lib.output import header, write_text
from experiments.lib.provenance import ROOT

REF = ROOT / "search_spaces" / "reference"
HELPER = ROOT / "tests" / "triton_interp.py"
# Nemotron-Flash paper (arXiv 2511.18890) Table 6: H100, batch 1, 8192 decode tokens, seconds.
PAPER_8K_S = {"nemotron_flash_1b": 14.45, "qwen3_0_6b": 27.55, "llama3_2_1b": 21.44, "nemotron_flash_3b": 28.71}
PACKAGES = ("torch", "triton", "flash-linear-attention", "mamba-ssm", "causal-conv1d", "optuna", "ray", "hydra-core")


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]       # reference genomes timed at full size
    decode_tokens: tuple[int, ...]
    prompt_len: int
    repeats: int
    warmup: int
    profile: str | None           # roofline profile; None: from the GPU's name
    pytest: bool
    pytest_timeout_s: int
    fast_paths: bool
    fast_paths_timeout_s: int
    census: bool                  # kernels of each model's decode step on CUDA (ATen ops + Triton launches)
    throughput: bool
    throughput_tokens: int
    max_batch: int
    training: bool                # a short proxy training on the device (bf16 autocast): tokens/s, MFU, kernel paths
    training_tokens: int
    out: str


def environment() -> dict[str, Any]:
    import torch

    driver = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        driver = f"unknown ({type(e).__name__})"
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "driver": driver, "cuda": torch.version.cuda, "packages": versions}


def profile_for(gpu: str) -> str:
    from flashsearch.proxies.latency.devices import device_for_gpu

    return device_for_gpu(gpu) or "h100"   # an unprofiled GPU is compared with the H100 profile


def run_pytest(timeout_s: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:randomly", "tests"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout_s} s"}
    tail = p.stdout.strip().splitlines()[-1:] or [p.stderr.strip()[-300:]]
    failures = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return {"ok": p.returncode == 0, "summary": tail[0], "failures": failures}


def run_fast_paths(timeout_s: int) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("triton_interp", HELPER)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)                       # tolerances and the verdict; the kernels run below
    try:
        p = subprocess.run([sys.executable, str(HELPER), "--device", "cuda"], cwd=ROOT, capture_output=True,
                           text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout_s} s", "cases": {}}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULTS ")]
    if not lines:
        return {"ok": False, "summary": f"rc {p.returncode}: {p.stderr.strip()[-500:]}", "cases": {}}
    cases = json.loads(lines[-1].removeprefix("RESULTS "))
    verdict = {}
    for name, r in cases.items():
        if "skip" in r or "error" in r:
            verdict[name] = "skip" if "skip" in r else "error"
        else:
            verdict[name] = "ok" if helper.within(r, name, helper.DEVICE_TOLERANCE) else "FAIL"
    ok = all(v in ("ok", "skip") for v in verdict.values())
    return {"ok": ok, "summary": ", ".join(f"{v} {sum(x == v for x in verdict.values())}"
                                          for v in ("ok", "FAIL", "error", "skip")),
            "tolerance": helper.DEVICE_TOLERANCE, "verdict": verdict, "cases": cases}


def run_latency(args: Settings, profile: str) -> list[dict[str, Any]]:
    from flashsearch.builders import load_genome
    from flashsearch.proxies.base import Workload
    from flashsearch.proxies.latency.measured import MeasuredPredictor
    from flashsearch.proxies.latency.roofline import RooflinePredictor

    pred = MeasuredPredictor(device="cuda", warmup=args.warmup, repeats=args.repeats)
    roof = RooflinePredictor(profile)
    rows = []
    for name in args.models:
        genome = load_genome(REF / f"{name}.yaml")
        for n in args.decode_tokens:
            w = Workload(prompt_len=args.prompt_len, decode_tokens=n)
            row: dict[str, Any] = {"model": name, "decode_tokens": n, "roofline_s": roof.predict(genome, w),
                                   "paper_h100_s": PAPER_8K_S.get(name) if n == 8192 else None}
            t0 = time.perf_counter()
            try:
                stats = pred.measure(genome, w)
                row.update(measured_s=stats.median_s, spread=stats.spread, source=stats.source,
                           capture_error=pred.capture_error)
            except Exception as e:  # noqa: BLE001 - recorded; the next model still runs
                row.update(measured_s=None, error=f"{type(e).__name__}: {str(e)[:300]}")
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {name} {n} tokens: {row.get('measured_s')} s measured, {row['roofline_s']:.2f} s roofline",
                  flush=True)
    return rows


def run_census(args: Settings) -> dict[str, Any]:
    from flashsearch.builders import load_genome
    from flashsearch.proxies.latency.census import decode_step_census, format_census

    tables = {}
    for name in args.models:
        rows = decode_step_census(load_genome(REF / f"{name}.yaml"), context=args.prompt_len, device="cuda")
        tables[name] = format_census(rows)
    return {"ok": True, "summary": f"{len(tables)} models", "tables": tables}


def run_throughput(args: Settings) -> dict[str, Any]:
    from flashsearch.builders import load_genome
    from flashsearch.proxies.base import Workload
    from flashsearch.proxies.latency.measured import MeasuredPredictor

    pred = MeasuredPredictor(device="cuda", warmup=2, repeats=1, isolate_probes=True)   # a crashing probe: not fitting
    name = args.models[0]
    w = Workload(prompt_len=args.prompt_len, decode_tokens=args.throughput_tokens)
    try:
        tps = pred.max_batch_throughput(load_genome(REF / f"{name}.yaml"), w, max_batch=args.max_batch)
    except Exception as e:  # noqa: BLE001 - recorded
        return {"ok": False, "model": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    r = pred.last_throughput
    return {"ok": True, "model": name, "tokens_per_s": tps, "batch": r.batch, "limited_by": r.limited_by,
            "batch_cap": pred.batch_cap, "probe_errors": pred.probe_errors, "source": r.source}


def run_training(args: Settings) -> dict[str, Any]:
    """The quality proxy as a GPU search runs it: the first model's proxy, bf16 autocast, fused kernels."""
    from flashsearch.builders import load_genome
    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    name = args.models[0]
    r = ShortTrain(device="cuda", precision="auto").evaluate(load_genome(REF / f"{name}.yaml"),
                                                             Budget(tokens=args.training_tokens))
    x = r.extra
    return {"ok": True, "model": name, "summary": f"{name} proxy: {x['tokens_per_s']:.0f} tokens/s, MFU {x['mfu']}, "
            f"{x['precision']}, val {r.loss:.3f} bits/byte", "tokens_per_s": x["tokens_per_s"], "mfu": x["mfu"],
            "precision": x["precision"], "fast_path": x["fast_path"], "loss": r.loss}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def main(args: Settings, meta: dict) -> None:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        raise SystemExit(2)
    env = environment()
    profile = args.profile or profile_for(env["gpu"])
    result: dict[str, Any] = {"revision": meta["revision"], "environment": env, "profile": profile}
    parts = [("pytest", args.pytest, lambda: run_pytest(args.pytest_timeout_s)),
             ("fast_paths", args.fast_paths, lambda: run_fast_paths(args.fast_paths_timeout_s)),
             ("census", args.census, lambda: run_census(args)),
             ("latency", True, lambda: run_latency(args, profile)),
             ("throughput", args.throughput, lambda: run_throughput(args)),
             ("training", args.training, lambda: run_training(args))]
    for key, wanted, fn in parts:
        if not wanted:
            continue
        print(f"gpu_check: {key} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result[key] = fn()
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the others
            result[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        result[f"{key}_wall_s"] = round(time.perf_counter() - t0, 1)

    slug = re.sub(r"[^a-z0-9]+", "_", env["gpu"].lower()).strip("_")
    out = Path(args.out)
    write_text(out / f"gpu_check_{slug}.json", json.dumps(result, indent=1, default=str) + "\n")
    lines = [header(f"GPU check: {env['gpu']}", meta, clock="wall"), "",
             f"- driver {env['driver']}, CUDA {env['cuda']}, {env['gpu_memory_gib']} GiB; packages: "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items()), ""]
    for key in ("pytest", "fast_paths", "census", "throughput", "training"):
        if key in result and isinstance(result[key], dict):
            r = result[key]
            lines.append(f"- {key}: {'ok' if r.get('ok') else 'FAILED'} - "
                         f"{r.get('summary') or r.get('error') or r.get('tokens_per_s')} ({result[key + '_wall_s']} s)")
    if "latency" in result and isinstance(result["latency"], list):
        lines += ["", f"Batch-1 decode after a {args.prompt_len}-token prompt, bf16, CUDA graphs; roofline:{profile}.",
                  "", "| model | tokens | measured s | roofline s | measured / roofline | paper H100 s | source |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["latency"]:
            ratio = r["measured_s"] / r["roofline_s"] if r.get("measured_s") else None
            lines.append(f"| {r['model']} | {r['decode_tokens']} | {_fmt(r.get('measured_s'))} | "
                         f"{r['roofline_s']:.2f} | {_fmt(ratio)} | {_fmt(r.get('paper_h100_s'))} | "
                         f"{r.get('source') or r.get('error', '')} |")
    for name, table in (result.get("census") or {}).get("tables", {}).items():
        lines += ["", f"Kernel census of one CUDA decode step, {name}:", "", table]
    write_text(out / f"gpu_check_{slug}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [k for k in ("pytest", "fast_paths", "census", "throughput", "training") if isinstance(result.get(k), dict)
              and not result[k].get("ok")]
    failed += ["latency"] if any(r.get("measured_s") is None for r in result.get("latency", [])) else []
    if failed:
        print(f"gpu_check: failed parts: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
