"""Workload validates itself once, for every predictor; the config's workload section is a Workload."""

from __future__ import annotations

import numpy as np
import pytest

from factories import HYBRID_YAML
from flashsearch.config import load_config
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Workload


@pytest.mark.parametrize("field,value", [("batch", 0), ("batch", 1.5), ("batch", True), ("prompt_len", -1),
                                         ("decode_tokens", 0), ("decode_tokens", "8")])
def test_bad_workload_is_one_line_error(field, value) -> None:
    with pytest.raises(FlashsearchError, match=rf"^workload\.{field} must be an integer >= \d, got ") as e:
        Workload(**{field: value})
    assert "\n" not in str(e.value)


def test_numpy_integers_are_accepted_as_plain_ints() -> None:
    w = Workload(batch=np.int64(2), prompt_len=np.int32(0), decode_tokens=np.int64(16))
    assert (w.batch, w.prompt_len, w.decode_tokens) == (2, 0, 16) and type(w.batch) is int


def test_the_config_section_is_the_workload() -> None:
    cfg = load_config(HYBRID_YAML, ["workload.decode_tokens=512", "workload.batch=4"])
    w = cfg.workload
    assert isinstance(w, Workload) and (w.batch, w.decode_tokens) == (4, 512)
    assert (w.device, w.prompt_len) == ("h100", 128)                       # as the YAML says
    with pytest.raises(FlashsearchError, match=r"workload\.batch must be an integer >= 1, got 0"):
        load_config(HYBRID_YAML, ["workload.batch=0"])
