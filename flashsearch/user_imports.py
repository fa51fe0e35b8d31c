"""Import the modules a run's `imports:` names (user operators, plug-ins), with one-line errors.

The controller imports them before the search space is built and every worker before it evaluates a
candidate (CandidateEvaluator), so an operator class defined in a user's module is registered
(flashsearch.operators) wherever genomes are built. Python caches imports: repeating the call is free.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from flashsearch.errors import FlashsearchError


def import_modules(names: Sequence[str], where: str = "imports") -> None:
    """Import each dotted module name in `names`; a missing or failing module is one FlashsearchError line."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise FlashsearchError(f"{where}: {name!r} is not a module name; give dotted names like my_pkg.my_ops")
        try:
            importlib.import_module(name.strip())
        except FlashsearchError as e:        # e.g. an operator class with a taken name or a bad Options type
            raise FlashsearchError(f"{where}: module {name!r}: {e}") from None
        except ImportError as e:
            raise FlashsearchError(f"{where}: cannot import module {name!r} ({e}); check the name and that it is on "
                                   "PYTHONPATH (on every worker, for a Ray cluster)") from None
        except Exception as e:  # noqa: BLE001 - any error inside the user's module is a one-line user error
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise FlashsearchError(f"{where}: importing module {name!r} failed ({type(e).__name__}: {detail})") from None
