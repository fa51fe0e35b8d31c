"""python -m experiments list | show <study> | run <study> [--quick] [key=value ...] | check [--quick]"""

from __future__ import annotations

import argparse
import subprocess
import sys

from flashsearch.errors import FlashsearchError


def _list() -> int:
    from experiments.lib.studies import study_names, summary

    names = study_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {summary(name)}")
    return 0


def _show(name: str, quick: bool) -> int:
    from experiments.lib.settings import as_dict
    from experiments.lib.studies import settings_of

    for key, value in as_dict(settings_of(name, quick=quick)).items():
        print(f"{key}: {value!r}")
    return 0


def _check(quick: bool) -> int:
    """Every study's settings load (with and without quick:), its script imports, its results name their
    revision; then (unless --quick) the study library's own tests."""
    from experiments.lib.studies import missing_provenance, settings_of, study_names

    problems = []
    for name in study_names():
        try:
            settings_of(name)
            settings_of(name, quick=True)
        except Exception as e:  # noqa: BLE001 - report every broken study, not only the first
            problems.append(f"{name}: {type(e).__name__}: {e}")
        problems += [f"{name}: {path} has no revision in its .meta.json" for path in missing_provenance(name)]
        print(f"{name}: {'ok' if not any(p.startswith(name + ':') for p in problems) else 'FAILED'}", flush=True)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        return 1
    if quick:
        return 0
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "experiments/tests"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments", description="List, inspect, run and check studies.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every study and what it measures")
    show = sub.add_parser("show", help="a study's settings (settings.yaml)")
    show.add_argument("study")
    show.add_argument("--quick", action="store_true", help="with its quick: overrides")
    run = sub.add_parser("run", help="run a study; results land in its settings' out folder")
    run.add_argument("study")
    run.add_argument("--quick", action="store_true", help="apply settings.yaml's quick: overrides (a smoke run)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override settings (values parsed as YAML)")
    check = sub.add_parser("check", help="settings load, scripts import, results name their revision; tests")
    check.add_argument("--quick", action="store_true", help="skip the study library's tests")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            return _list()
        if args.cmd == "show":
            return _show(args.study, args.quick)
        if args.cmd == "check":
            return _check(args.quick)
        from experiments.lib.studies import run_study

        for side in run_study(args.study, args.overrides, args.quick):
            print(f"provenance: {side}")
        return 0
    except FlashsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
