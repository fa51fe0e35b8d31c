"""flashsearch: search latency-optimal hybrid language-model architectures (Nemotron-Flash style).

`import flashsearch` stays cheap (no torch, transformers, ray or optuna). It also makes the model type of exported
models, "flashsearch_hybrid", known to transformers' Auto classes without importing transformers itself: an import
hook registers FlashsearchConfig with AutoConfig when transformers loads `configuration_auto`, and
FlashsearchForCausalLM with AutoModelForCausalLM when it loads `modeling_auto` (right away if it already has).
So, in either order:

    import flashsearch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("runs/x/export/1-<genome_id>")   # folder with weights
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Callable, Sequence

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def register_hf() -> None:
    """Register FlashsearchConfig / FlashsearchForCausalLM with transformers now (imports transformers' modeling
    code). Normally not needed: importing flashsearch arranges it."""
    from flashsearch.model.hf import register

    register()


def _register_config() -> None:
    # Needs only transformers.configuration_utils, which is complete whenever configuration_auto has loaded
    # (transformers' modeling code may still be mid-import at that point, so it must not be touched here).
    from flashsearch.model.hf_config import register_config

    register_config()


# transformers module -> what to register once it has loaded. Entries are removed as they run.
_PENDING: dict[str, Callable[[], None]] = {_CONFIG_AUTO: _register_config, _MODELING_AUTO: register_hf}


def _run(module_name: str) -> None:
    action = _PENDING.pop(module_name, None)
    if not _PENDING and _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
    if action is None:
        return
    try:
        action()
    except Exception as e:  # never break the user's transformers import because of us
        warnings.warn(f"flashsearch could not register 'flashsearch_hybrid' with transformers ({type(e).__name__}: "
                      f"{e}); call flashsearch.register_hf() after importing transformers", stacklevel=2)


class _RunAfterExec(importlib.abc.Loader):
    """Wraps a module's real loader; runs our registration right after the module has executed."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run(module.__name__)

    def __getattr__(self, name: str):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


class _TransformersAutoHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the two transformers Auto modules it asks the other finders for the spec and
    wraps its loader, so registration happens exactly when (and only if) transformers loads those modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfterExec(spec.loader)
                return spec
        return None


_HOOK = _TransformersAutoHook()


def _install() -> None:
    sys.meta_path.insert(0, _HOOK)
    for name in (_CONFIG_AUTO, _MODELING_AUTO):  # transformers got there first: register now
        if name in sys.modules:
            _run(name)


_install()

__all__ = ["register_hf"]
