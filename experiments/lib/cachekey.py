"""Cache keys that name every setting that changes a result.

A study's CSV is also its cache: a rerun trains only the rows it lacks. A row is reused only if it was made with
the same settings, so its key holds a hash of all of them: the proxy as actually constructed (ShortTrain's
resolved configuration, defaults included, with its class, corpus and seed), the token budget and anything else
the caller passes. Changing a default then changes the key, and the stale row is retrained instead of reused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Mapping

# Attributes that change how fast a proxy trains, not what it computes.
RUNTIME_ONLY = frozenset({"threads", "log_every"})
DIGEST_CHARS = 12


def _plain(value: Any) -> Any:
    """A JSON-able rendering of a configuration value; None for values that are not configuration."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if str(k).startswith("_") or k in RUNTIME_ONLY:
                continue
            p = _plain(v)
            if p is not None:  # unset options are left out: a new option that defaults to None changes no key
                out[str(k)] = p
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # tensors, locks, loaded corpora: state, not settings


def proxy_fingerprint(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved settings of ShortTrain(**kwargs): its class, the default corpus, and every public
    configuration attribute or config-object field (defaults included), without the ones that only change its
    speed."""
    return json.loads(_fingerprint(json.dumps(dict(kwargs), sort_keys=True, default=str)))


@functools.lru_cache(maxsize=256)
def _fingerprint(kwargs_json: str) -> str:  # one proxy construction per distinct setting, not per job
    from flashsearch.proxies.quality.short_train import ShortTrain

    from flashsearch.proxies.quality.corpus import DEFAULT_CORPUS

    proxy = ShortTrain(**json.loads(kwargs_json))
    cls = type(proxy)
    out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}",
                           "default_corpus": DEFAULT_CORPUS}  # what corpus=None trains on
    for name, value in vars(proxy).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(_plain(value))  # a config object's fields, flat: the same key for either form
        elif not name.startswith("_") and name not in RUNTIME_ONLY:
            plain = _plain(value)
            if plain is not None:
                out[name] = plain
    return json.dumps(out, sort_keys=True)


def digest(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (key order does not matter)."""
    text = json.dumps([_plain(p) if not isinstance(p, (str, int, float)) else p for p in parts], sort_keys=True,
                      default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def proxy_digest(kwargs: Mapping[str, Any], *extra: Any) -> str:
    """digest of the proxy's resolved settings and `extra` (token budget, ladder, ...)."""
    return digest(proxy_fingerprint(kwargs), *extra)
