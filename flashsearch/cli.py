"""Command line: `flashsearch run | describe | report | export`.

Bad input never shows a traceback: it prints one `error: ...` line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from flashsearch.errors import FlashsearchError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashsearch", description="Search latency-optimal hybrid LM architectures.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run (or resume) a search from a YAML config")
    r.add_argument("config", help="search YAML, e.g. search_spaces/hybrid_1b.yaml")
    r.add_argument("overrides", nargs="*", help="Hydra-style overrides: search.trials=40 out_dir=runs/x")
    r.add_argument("--force-new", action="store_true", help="discard an existing study in out_dir and start over")

    d = sub.add_parser("describe", help="summarize a genome YAML: layers, parameters, predicted latency")
    d.add_argument("genome", help="genome YAML, e.g. search_spaces/reference/nemotron_flash_1b.yaml")
    d.add_argument("--device", default="h100", help="device profile for the roofline prediction (default h100)")
    d.add_argument("--decode-tokens", type=int, default=8192, help="decode length (default 8192)")
    d.add_argument("--prompt-len", type=int, default=128, help="prompt length (default 128)")
    d.add_argument("--json", action="store_true", help="print JSON")

    rep = sub.add_parser("report", help="rebuild trials.parquet, pareto.png/html of a run directory")
    rep.add_argument("run_dir")

    e = sub.add_parser("export", help="write the top Pareto candidates as Hugging Face config folders")
    e.add_argument("run_dir")
    e.add_argument("--top", type=int, default=3)
    e.add_argument("--out", default=None, help="destination (default RUN_DIR/export)")
    return p


def describe(path: str, device: str = "h100", decode_tokens: int = 8192, prompt_len: int = 128) -> dict[str, Any]:
    from flashsearch.builders import load_genome
    from flashsearch.model import count_parameters
    from flashsearch.proxies.base import Workload
    from flashsearch.proxies.roofline import RooflinePredictor

    if decode_tokens <= 0 or prompt_len < 0:
        raise FlashsearchError("--decode-tokens must be positive and --prompt-len >= 0")
    genome = load_genome(path)
    predictor = RooflinePredictor(device=device)
    workload = Workload(device=device, prompt_len=prompt_len, decode_tokens=decode_tokens)
    seconds = predictor.predict(genome, workload)
    counts = {op: genome.count(op) for op in dict.fromkeys(genome.layer_types)}
    return {
        "file": str(path),
        "genome_id": genome.id,
        "layer_types": list(genome.layer_types),
        "pattern": genome.summary(),
        "operator_counts": counts,
        "d_model": genome.d_model,
        "n_heads": genome.n_heads,
        "n_kv_heads": genome.n_kv_heads,
        "head_dim": genome.head_dim,
        "ffn_hidden": genome.ffn_hidden,
        "vocab_size": genome.vocab_size,
        "params": count_parameters(genome),
        "latency": {"seconds": seconds, "source": getattr(predictor, "source", "roofline"), "device": device,
                    "batch": 1, "prompt_len": prompt_len, "decode_tokens": decode_tokens,
                    "ms_per_token": 1000.0 * seconds / decode_tokens},
        "genome": genome.to_dict(),
    }


def _print_describe(info: dict[str, Any]) -> None:
    lat = info["latency"]
    print(f"{info['file']}  (genome {info['genome_id']})")
    print(f"  layers    {len(info['layer_types'])}: {info['pattern']}")
    print(f"  operators {', '.join(f'{k} x{v}' for k, v in info['operator_counts'].items())}")
    print(f"  width     d_model {info['d_model']}, heads {info['n_heads']}/{info['n_kv_heads']} kv, head_dim "
          f"{info['head_dim']}, ffn {info['ffn_hidden']}, vocab {info['vocab_size']}")
    print(f"  params    {info['params'] / 1e9:.3f} B ({info['params']:,})")
    print(f"  latency   {lat['seconds']:.2f} s for {lat['decode_tokens']} decode tokens at batch 1 "
          f"({lat['ms_per_token']:.3f} ms/token, {lat['source']})")


def _cmd_run(args: argparse.Namespace) -> int:
    from flashsearch.config import load_config
    from flashsearch.runner import STUDY_FILE, run

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, force_new=args.force_new)
    out = result.out_dir
    minutes, secs = divmod(int(result.seconds), 60)
    print(f"\nfinished: {result.n_complete} trials complete, {result.n_failed} failed, in {minutes}m{secs:02d}s")
    print(f"  study          {out / STUDY_FILE}   (browse: optuna-dashboard {out / STUDY_FILE})")
    print(f"  trials table   {out / 'trials.parquet'}")
    print(f"  pareto plot    {out / 'pareto.png'}  |  interactive: {out / 'pareto.html'}")
    print(f"  exported       {out / 'export'}/ ({len(result.exported)} Hugging Face configs)")
    print(f"  resume/extend  flashsearch run {args.config} out_dir={out} search.trials=<more>")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    info = describe(args.genome, args.device, args.decode_tokens, args.prompt_len)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_describe(info)
    return 0


def _load_study(run_dir: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from flashsearch.runner import STUDY_FILE

    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        raise FlashsearchError(f"no study found at {path}; pass the out_dir of a `flashsearch run`")
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if len(names) != 1:
        raise FlashsearchError(f"{path} holds {len(names)} studies ({names}); expected exactly one")
    return optuna.load_study(study_name=names[0], storage=storage)


def _target_of(study: Any) -> float | None:
    from flashsearch.runner import FINGERPRINT_ATTR

    return (study.user_attrs.get(FINGERPRINT_ATTR) or {}).get("target_latency")


def _cmd_report(args: argparse.Namespace) -> int:
    from flashsearch.report import write_report

    study = _load_study(args.run_dir)
    write_report(study, Path(args.run_dir), target_latency=_target_of(study))
    print(f"wrote {Path(args.run_dir) / 'trials.parquet'}, pareto.png, pareto.html")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flashsearch.export import export_top

    if args.top <= 0:
        raise FlashsearchError(f"--top must be positive, got {args.top}")
    study = _load_study(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    paths = export_top(study, out, args.top, target_latency=_target_of(study))
    for p in paths:
        print(p)
    return 0


COMMANDS = {"run": _cmd_run, "describe": _cmd_describe, "report": _cmd_report, "export": _cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "offline")
    args = _parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace Optuna's per-trial logs
    try:
        return COMMANDS[args.command](args)
    except FlashsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
