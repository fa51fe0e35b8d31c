"""The protocol modules stay importable without torch (plug-in authors and `import flashsearch.proxies` pay nothing),
and every plug-in in the registry is importable, exported lazily and buildable from its short name in a YAML."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import flashsearch.builders as builders
import flashsearch.proxies as proxies
from flashsearch.config import load_config
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import latency_source
from flashsearch.proxies.registry import LATENCY_PREDICTORS, QUALITY_PROXIES

# The workload device each shipped latency predictor is built for below: roofline knows GPU profiles; the
# others ship CPU tables (or time this CPU). A new entry is built for the CPU unless it is named here.
DEVICE = {"roofline": "h100"}


@pytest.mark.parametrize("module", ["flashsearch.proxies.base", "flashsearch.proxies", "flashsearch.proxies.registry",
                                    "flashsearch.proxies.quality", "flashsearch.proxies.latency"])
def test_importing_protocols_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", f"import {module} pulled in torch"


def test_lazy_names_resolve_to_their_modules() -> None:
    from flashsearch.proxies.latency.measured import MeasuredPredictor
    from flashsearch.proxies.latency.roofline import RooflinePredictor
    from flashsearch.proxies.quality.corpus import ByteCorpus
    from flashsearch.proxies.quality.short_train import ShortTrain

    assert proxies.RooflinePredictor is RooflinePredictor and proxies.ShortTrain is ShortTrain
    assert proxies.MeasuredPredictor is MeasuredPredictor and proxies.ByteCorpus is ByteCorpus
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        proxies.NoSuchThing  # noqa: B018


def _class_at(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", sorted({*LATENCY_PREDICTORS.values(), *QUALITY_PROXIES.values()}))
def test_every_registered_class_imports_and_is_a_lazy_export(path: str) -> None:
    cls = _class_at(path)
    name = path.rpartition(".")[2]
    assert cls.__name__ == name and name in proxies.__all__ and getattr(proxies, name) is cls


def test_builders_read_the_registry() -> None:
    assert builders.LATENCY_PREDICTORS is LATENCY_PREDICTORS and builders.QUALITY_PROXIES is QUALITY_PROXIES


@pytest.mark.parametrize("short", sorted(LATENCY_PREDICTORS))
def test_every_latency_predictor_builds_from_its_short_name(tmp_path, short: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"latency:\n  _target_: {short}\nworkload:\n  device: {DEVICE.get(short, 'cpu')}\n")
    predictor = builders.build_latency(load_config(config))
    assert type(predictor) is _class_at(LATENCY_PREDICTORS[short])
    assert latency_source(predictor).startswith(f"{short}:")          # results say which predictor made them


@pytest.mark.parametrize("short", sorted(QUALITY_PROXIES))
def test_every_quality_proxy_builds_from_its_short_name(tmp_path, short: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"quality:\n  _target_: {short}\n")
    proxy = builders.build_quality(load_config(config))
    assert type(proxy) is _class_at(QUALITY_PROXIES[short])


def test_an_unregistered_short_name_is_one_clear_error(tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("latency:\n  _target_: rooflin\n")
    with pytest.raises(FlashsearchError, match="neither a short name .*roofline"):
        builders.build_latency(load_config(config))
