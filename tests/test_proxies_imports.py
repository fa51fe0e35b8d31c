"""The protocol modules stay importable without torch (plug-in authors and `import flashsearch.proxies` pay nothing)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["flashsearch.proxies.base", "flashsearch.proxies",
                                    "flashsearch.proxies.quality", "flashsearch.proxies.latency"])
def test_importing_protocols_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", f"import {module} pulled in torch"


def test_lazy_names_resolve_to_their_modules() -> None:
    import flashsearch.proxies as proxies
    from flashsearch.proxies.latency.measured import MeasuredPredictor
    from flashsearch.proxies.latency.roofline import RooflinePredictor
    from flashsearch.proxies.quality.short_train import ShortTrain

    assert proxies.RooflinePredictor is RooflinePredictor and proxies.ShortTrain is ShortTrain
    assert proxies.MeasuredPredictor is MeasuredPredictor
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        proxies.NoSuchThing  # noqa: B018
