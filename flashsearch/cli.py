"""Command line: `flashsearch run | describe | report | export | profile | latency {validate,fit} | data prepare`.

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
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (e.g. your own operators) for describe/profile/latency; repeatable. "
                        "`run` reads the config key `imports:`, report/export the run's config.yaml")
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
    e.add_argument("--weights", action="store_true",
                   help="also write model.safetensors of a freshly initialised full-size model (4 bytes/param)")

    pr = sub.add_parser("profile", help="profile per-operator decode-step latency on this machine (a LUT table)")
    pr.add_argument("--device", default="cpu", help="device to profile (only cpu is supported today)")
    pr.add_argument("--widths", default="32,64,96,128,160,192", help="comma-separated d_model values")
    pr.add_argument("--contexts", default="0,128,512,2048,4096", help="comma-separated context lengths")
    pr.add_argument("--ops", default=None, help="comma-separated operators (default: all)")
    pr.add_argument("--vocabs", default="256,1024", help="comma-separated vocab sizes for the LM head")
    pr.add_argument("--steps", type=int, default=16, help="decode steps per timing sample")
    pr.add_argument("--layers", type=int, default=24, help="distinct layers per timed stack (cache realism)")
    pr.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median kept)")
    pr.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1)")
    pr.add_argument("--clock", choices=("thread", "wall"), default="thread",
                    help="thread CPU time (robust on a shared machine, default) or wall clock")
    pr.add_argument("--out", default="lut_cpu.json", help="table file to write (JSON)")

    lat = sub.add_parser("latency", help="latency predictor tools: validate against measurement, fit `learned`")
    lsub = lat.add_subparsers(dest="latency_command", required=True, metavar="ACTION")
    v = lsub.add_parser("validate", help="rank/error statistics of predictors vs measured CPU decode latency")
    v.add_argument("--predictor", action="append", required=True,
                   help="predictor short name or dotted path (repeat for several): lut, roofline, learned, ...")
    v.add_argument("--n", type=int, default=30, help="validation genomes (default 30)")
    v.add_argument("--n-train", type=int, default=40, help="separate genomes measured to fit `learned` (default 40)")
    v.add_argument("--space", default=None, help="search YAML whose space is sampled (default hybrid_1b.yaml)")
    v.add_argument("--widths", default="64,96,128,160,192", help="small widths the sampled genomes are scaled to")
    v.add_argument("--vocab", type=int, default=1024, help="vocab size of the scaled genomes (default 1024)")
    v.add_argument("--prompt-len", type=int, default=32)
    v.add_argument("--decode-tokens", type=int, default=128)
    v.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds (median kept)")
    v.add_argument("--table", default=None, help="LUT table for `lut` (default: the shipped CPU table)")
    v.add_argument("--roofline-device", default="cpu",
                   help="device profile for `roofline`: cpu (proxies/latency/tables/roofline_cpu.yaml) or a profile path")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--clock", choices=("thread", "wall"), default="thread",
                   help="measure in thread CPU time (robust on a shared machine, default) or wall clock")
    v.add_argument("--measurements", default=None,
                   help="re-score on a previous run's measurements.csv instead of measuring again")
    v.add_argument("--json", action="store_true", help="print machine-readable results")
    v.add_argument("--out", default=None, help="directory for scatter.png, results.json, measurements.csv")
    f = lsub.add_parser("fit", help="fit the `learned` predictor on a CSV/JSON/parquet of measurements")
    f.add_argument("measurements", help="table with columns genome_json, prompt_len, decode_tokens, seconds")
    f.add_argument("--out", required=True, help="model JSON to write")
    f.add_argument("--alpha", type=float, default=1e-3, help="ridge strength (relative)")
    dat = sub.add_parser("data", help="data tools: tokenize text into shards the quality proxy reads lazily")
    dsub = dat.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="tokenize .txt/.jsonl/.parquet files, a folder of them, a saved Hugging "
                                         "Face dataset or a named corpus into token shards + manifest.json")
    dp.add_argument("input", help="a file, a directory of files, a save_to_disk folder, or wikipedia|pydoc|...")
    dp.add_argument("out_dir", help="folder to write the shards to (point data.shards at it)")
    dp.add_argument("--tokenizer", default="bpe",
                    help="bytes, bpe (ours, trained once on the default corpus; bpe:N for N ids) or a "
                         "tokenizer.json / Hugging Face tokenizer folder (default bpe)")
    dp.add_argument("--text-field", default="text", help="JSONL field / parquet column holding the text")
    dp.add_argument("--shard-tokens", type=int, default=None, help="token ids per shard file (default 1e8)")
    dp.add_argument("--val-fraction", type=float, default=None,
                    help="share of the text held out for validation, split as the byte corpus splits (default 0.1)")
    dp.add_argument("--dtype", default="auto", help="id type: auto (uint16 when the vocabulary fits), uint16, uint32")
    return p


def describe(path: str, device: str = "h100", decode_tokens: int = 8192, prompt_len: int = 128) -> dict[str, Any]:
    from flashsearch.builders import load_genome
    from flashsearch.model import count_parameters
    from flashsearch.proxies.base import Workload
    from flashsearch.proxies.latency.roofline import RooflinePredictor

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
    _import_run_modules(Path(run_dir))
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if len(names) != 1:
        raise FlashsearchError(f"{path} holds {len(names)} studies ({names}); expected exactly one")
    return optuna.load_study(study_name=names[0], storage=storage)


def _import_run_modules(run_dir: Path) -> None:
    """The run's `imports:` (saved in its config.yaml), so genomes using user operators load here too."""
    import yaml

    from flashsearch.user_imports import import_modules

    saved = run_dir / "config.yaml"
    if saved.is_file():
        imports = (yaml.safe_load(saved.read_text()) or {}).get("imports") or []
        import_modules(imports, where=f"imports (from {saved})")


def _target_of(study: Any) -> float | None:
    from flashsearch.search import attrs

    return (study.user_attrs.get(attrs.FINGERPRINT) or {}).get("target_latency")


def _cmd_report(args: argparse.Namespace) -> int:
    from flashsearch.report import write_report

    study = _load_study(args.run_dir)
    paths = write_report(study, Path(args.run_dir), target_latency=_target_of(study))
    print(f"wrote {Path(args.run_dir)}/: " + ", ".join(p.name for p in paths.values()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flashsearch.export import export_top

    if args.top <= 0:
        raise FlashsearchError(f"--top must be positive, got {args.top}")
    study = _load_study(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    paths = export_top(study, out, args.top, target_latency=_target_of(study), weights=args.weights)
    for p in paths:
        print(p)
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise FlashsearchError(f"{what} must be comma-separated integers, got {text!r}") from None


def _cmd_profile(args: argparse.Namespace) -> int:
    from flashsearch.proxies.latency.profile import profile_table, progress_to_stderr, write_table

    if str(args.device).strip().lower() != "cpu":
        raise FlashsearchError(f"profile --device {args.device!r}: only cpu can be profiled today; run on the "
                               "target machine with --device cpu, or use latency=roofline for GPUs")
    ops = [o for o in args.ops.split(",") if o.strip()] if args.ops else None
    table = profile_table(widths=_int_list(args.widths, "--widths"), contexts=_int_list(args.contexts, "--contexts"),
                          ops=ops, vocabs=_int_list(args.vocabs, "--vocabs"), steps=args.steps,
                          repeats=args.repeats, layers=args.layers, threads=args.threads,
                          clock=args.clock,
                          command="flashsearch " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
                          progress=progress_to_stderr)
    path = write_table(table, args.out)
    print(f"wrote {path} ({len(table['ops'])} operators x {len(table['widths'])} widths x "
          f"{len(table['contexts'])} contexts, device {table['meta']['device_name']})")
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    if args.latency_command == "fit":
        from flashsearch.proxies.latency.learned import LearnedPredictor, read_measurements

        model = LearnedPredictor.fit(read_measurements(args.measurements), alpha=args.alpha)
        model.save(args.out)
        print(f"wrote {args.out} ({model.n_train} measurements, train MAPE {model.train_mape:.1%})")
        return 0
    from flashsearch.proxies.latency.validate_command import print_report, validate_cli

    result = validate_cli(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from flashsearch.data.prepare import PrepareConfig, prepare

    given = {"shard_tokens": args.shard_tokens, "val_fraction": args.val_fraction}
    config = PrepareConfig(text_field=args.text_field, dtype=args.dtype,
                           **{k: v for k, v in given.items() if v is not None})
    manifest = prepare(args.input, args.out_dir, args.tokenizer, config,
                       progress=lambda msg: print(msg, file=sys.stderr))
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    print(f"{args.out_dir}: {manifest['documents']} documents, {train['tokens']} train + {val['tokens']} validation "
          f"tokens ({manifest['dtype']}, tokenizer {manifest['tokenizer']['name']}, vocab "
          f"{manifest['tokenizer']['vocab_size']}); train on them with data.shards={args.out_dir}")
    return 0


COMMANDS = {"run": _cmd_run, "describe": _cmd_describe, "report": _cmd_report, "export": _cmd_export,
            "profile": _cmd_profile, "latency": _cmd_latency, "data": _cmd_data}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "offline")
    args = _parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)  # recorded by `profile` as the command that made a table
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace Optuna's per-trial logs
    try:
        from flashsearch.user_imports import import_modules

        import_modules(args.imports, where="--import")
        return COMMANDS[args.command](args)
    except FlashsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
