"""The study registry: every folder experiments/<study>/ holding settings.yaml and run.py is a study.

run.py defines `Settings` (a frozen dataclass: every knob, no defaults - settings.yaml is their one home, with an
`out` folder for the results) and `main(settings, meta)`, where meta is the run's provenance (experiments/lib/
provenance.py) for the markdown header. `run_study` loads the settings, runs the study from the repository root
and writes a .meta.json beside every result file the run wrote.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from flashsearch.errors import FlashsearchError

from experiments.lib.provenance import ROOT, provenance, sidecar_path, write_sidecars
from experiments.lib.settings import as_dict, load_settings

EXPERIMENTS = ROOT / "experiments"
SETTINGS_FILE = "settings.yaml"
SCRIPT = "run.py"


def study_names() -> list[str]:
    return sorted(p.name for p in EXPERIMENTS.iterdir()
                  if (p / SETTINGS_FILE).is_file() and (p / SCRIPT).is_file())


def _folder(name: str) -> Path:
    if name not in study_names():
        raise FlashsearchError(f"no study {name!r}; studies: {', '.join(study_names())}")
    return EXPERIMENTS / name


def summary(name: str) -> str:
    """First line of the study script's docstring (read without importing it)."""
    doc = ast.get_docstring(ast.parse((_folder(name) / SCRIPT).read_text())) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph, on one line


def module(name: str) -> ModuleType:
    _folder(name)  # an unknown study is a one-line error, not an import traceback
    mod = importlib.import_module(f"experiments.{name}.run")
    cls = getattr(mod, "Settings", None)
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen) or not callable(getattr(mod, "main",
                                                                                                       None)):
        raise FlashsearchError(f"experiments/{name}/{SCRIPT} must define a frozen dataclass Settings and "
                               "main(settings, meta)")
    if "out" not in {f.name for f in dataclasses.fields(cls)}:
        raise FlashsearchError(f"experiments/{name}/{SCRIPT}: Settings needs an `out` folder for its results")
    return mod


def settings_of(name: str, overrides: Sequence[str] = (), quick: bool = False) -> Any:
    return load_settings(module(name).Settings, _folder(name) / SETTINGS_FILE, overrides, quick)


def result_files(name: str) -> list[Path]:
    """The committed results of a study (sidecars excluded)."""
    folder = _folder(name) / "results"
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".meta.json")
                  and not p.name.startswith(".")) if folder.is_dir() else []


def missing_provenance(name: str) -> list[str]:
    """Results of a study whose sidecar does not name the revision that produced them."""
    bad = []
    for r in result_files(name):
        side = sidecar_path(r)
        files = json.loads(side.read_text()).get("files", {}) if side.exists() else {}
        if not str(files.get(r.name, "")).strip():
            bad.append(str(r.relative_to(ROOT)))
    return bad


def run_study(name: str, overrides: Sequence[str] = (), quick: bool = False) -> list[Path]:
    """Run a study from the repository root; return the sidecars written next to its new results."""
    settings = settings_of(name, overrides, quick)
    os.chdir(ROOT)  # settings name paths relative to the repository root
    meta = provenance(name, as_dict(settings))
    started = time.time() - 1.0
    module(name).main(settings, meta)
    out = Path(settings.out)
    candidates = list(out.glob("*")) if out.is_dir() else []
    # caches a study extends outside its out folder (proxy_fidelity's ladder_cache) get their revision too
    # (not the YAML configs a study reads: one edited while it ran is an input, not a result)
    candidates += [Path(v) for v in as_dict(settings).values() if isinstance(v, str) and v and Path(v).is_file()
                   and Path(v).suffix not in (".yaml", ".yml")]
    fresh = {p for p in candidates if p.is_file() and not p.name.startswith(".") and p.stat().st_mtime >= started}
    return write_sidecars(sorted(fresh), meta)
