"""ShortTrainConfig: every setting of the short-training quality proxy, its only defaults and its checks.

A YAML `quality: {_target_: short_train, lr: 0.003, seq_len: 128}` becomes `ShortTrainConfig(lr=0.003,
seq_len=128)` (through `ShortTrain(**options)`); a bad value or an unknown key is one FlashsearchError line naming
`quality.<key>`. The field types are the ones OmegaConf accepts, so the class also serves as a structured schema.

Why the defaults look as they do: the proxy trains on CPU, where the cost per token barely depends on the batch
size, so for a given token budget more, smaller steps (4 x 128 bytes) train further than fewer, larger ones.
Weight normalization and meta tokens (the Nemotron-Flash recipe) are opt-in; the recipe ablation study
(experiments/recipe_ablation) measures what they change.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from flashsearch.errors import FlashsearchError


def _bad(key: str, want: str, value: Any) -> FlashsearchError:
    return FlashsearchError(f"quality.{key} must be {want}, got {value!r}")


def _int(key: str, value: Any, minimum: int | None = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _bad(key, "an integer" + ("" if minimum is None else f" >= {minimum}"), value)
    return value


def _number(key: str, value: Any, lo: float, hi: float, lo_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= lo if lo_open else value < lo) or value > hi:
        raise _bad(key, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]", value)
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


@dataclass(frozen=True)
class ShortTrainConfig:
    """Settings of ShortTrain (proxies/quality/short_train.py). Lengths are in tokens (= bytes without shards or a
    tokenizer)."""

    # The proxy model: the genome's layer pattern at 1/width_divisor of its width (a multiple of head_dim).
    width_divisor: int = 16
    head_dim: int = 16
    mamba2_d_state: int = 16                        # state size of state-space operators in the proxy
    mamba2_head_dim: int = 16                       # their head size
    swa_reference_context: Optional[int] = 2048     # context the genome's windows are for; None: keep the windows
    # Training: AdamW, linear warmup then cosine (one budget) or warmup-stable-decay (a multi-fidelity ladder).
    seq_len: int = 128
    batch_size: int = 4
    lr: float = 3e-3
    # muP-style width scaling: the hidden matrices train at lr x lr_width_base / proxy d_model (Adam's update size
    # is set per entry, so a wider matrix moves its outputs more at one lr); embeddings keep lr. None: one lr.
    lr_width_base: Optional[int] = None
    min_lr_ratio: float = 0.1                       # the schedule ends at min_lr_ratio x lr
    warmup_fraction: float = 0.1                    # share of the steps (of the top rung's on a ladder, capped
                                                    # inside the first rung)
    warmup_steps: Optional[int] = None              # the warmup in steps instead (a ladder caps it inside rung 0)
    decay_fraction: float = 0.2                     # warmup-stable-decay: share of each rung's steps that decays
    weight_decay: Optional[float] = None            # None: 0.1, or 0 with weight_norm (it fixes the norms)
    weight_norm: bool = False                       # normalize the weight matrices after every step
    grad_clip: Optional[float] = 1.0                # max gradient norm; None: no clipping
    meta_tokens: int = 0                            # learnable tokens prepended to every window
    eval_batches: int = 32                          # validation: eval_batches x batch_size fixed windows
    log_every: int = 10                             # steps per point of the training curve
    seed: int = 0
    repeats: int = 1                                # > 1: mean over seeds seed, seed+1, ...
    # Data: your own text (data_path) or a named corpus (proxies/quality/corpus.py), not both; or token shards.
    data_path: Optional[str] = None
    text_field: str = "text"                        # the field holding the text in JSON lines
    corpus: Optional[str] = None                    # None: corpus.DEFAULT_CORPUS unless data_path is given
    val_fraction: float = 0.1
    # Tokens instead of bytes (flashsearch/data, docs/data.md); the score stays bits per byte of validation text.
    shards: Optional[str] = None                    # a folder of `flashsearch data prepare`: train on its tokens
    tokenizer: Optional[str] = None                 # None/bytes: bytes; bpe or a tokenizer.json (folder): the text
                                                    # above, tokenized once into cached shards
    # Execution.
    threads: Optional[int] = 1                      # torch threads while proxies run in this process; None: keep
    device: str = "cpu"                             # cpu or cuda[:N]
    fast: bool = True                               # CPU fast path: compiled kernels, bf16 projections, small chunks
    # auto: bf16 autocast on CUDA (fp32 master weights and optimizer state; every mixer on its fused kernel, which
    # takes bf16), fp32 on CPU (whose fast path rounds its projections to bf16 itself); or fp32 / bf16 everywhere.
    precision: str = "auto"
    compile: bool = False                           # torch.compile the proxy model (the first steps pay for it)

    def __post_init__(self) -> None:
        def put(key: str, value: Any) -> None:      # normalize a value in place (the dataclass is frozen)
            object.__setattr__(self, key, value)

        for key in ("width_divisor", "head_dim", "mamba2_d_state", "mamba2_head_dim", "batch_size", "eval_batches",
                    "log_every", "repeats"):
            _int(key, getattr(self, key))
        _int("seq_len", self.seq_len, 2)
        _int("meta_tokens", self.meta_tokens, 0)
        _int("seed", self.seed, None)
        for key in ("swa_reference_context", "threads", "warmup_steps", "lr_width_base"):
            if getattr(self, key) is not None:
                _int(key, getattr(self, key))
        put("lr", _number("lr", self.lr, 0.0, 1e38))
        put("min_lr_ratio", _number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, lo_open=False))
        put("warmup_fraction", _number("warmup_fraction", self.warmup_fraction, 0.0, 1.0, lo_open=False))
        put("decay_fraction", _number("decay_fraction", self.decay_fraction, 0.0, 1.0))
        put("val_fraction", _number("val_fraction", self.val_fraction, 0.0, 0.5))
        if self.weight_decay is not None:
            put("weight_decay", _number("weight_decay", self.weight_decay, 0.0, 10.0, lo_open=False))
        if self.grad_clip is not None:
            put("grad_clip", _number("grad_clip", self.grad_clip, 0.0, 1e9))
        _flag("weight_norm", self.weight_norm)
        _flag("fast", self.fast)
        _flag("compile", self.compile)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise _bad("precision", "auto, fp32 or bf16", self.precision)
        if self.precision == "bf16" and self.fast_cpu:
            raise FlashsearchError("quality.precision=bf16 on CPU needs quality.fast=false: the CPU fast path's "
                                   "compiled kernels take fp32 and round its projections to bf16 themselves")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise _bad("text_field", "a non-empty string", self.text_field)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise _bad("device", "'cpu' or 'cuda[:N]'", self.device)
        if self.data_path is not None:
            if not isinstance(self.data_path, (str, os.PathLike)):
                raise _bad("data_path", "a file path", self.data_path)
            put("data_path", os.fspath(self.data_path))
            if self.corpus is not None:
                raise FlashsearchError("quality.data_path and quality.corpus are both set; keep data_path for your "
                                       "own text or corpus for a named one")
        if isinstance(self.tokenizer, str) and self.tokenizer.strip().lower() == "bytes":
            put("tokenizer", None)                  # the byte path itself, not shards of bytes
        for key in ("shards", "tokenizer"):
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
                    raise _bad(key, "a path" + (", bytes or bpe" if key == "tokenizer" else ""), value)
                put(key, os.fspath(value))
        if self.shards is not None:
            # The shards fix the text, its split and its tokenizer; they are checked when first read (corpus()).
            given = [k for k in ("data_path", "corpus", "tokenizer") if getattr(self, k) is not None]
            if given:
                raise FlashsearchError(f"quality.shards is set, and so is {', '.join(f'quality.{k}' for k in given)}"
                                       "; the shards already fix the text and the tokenizer: keep one")
        elif self.data_path is None:
            from .corpus import DEFAULT_CORPUS, check_corpus

            # Checked now (known, installed): a typo or a missing corpus fails the run before any worker starts.
            # Its error names data.corpus, where a run's YAML sets it.
            checked = check_corpus(self.corpus or DEFAULT_CORPUS)
            if self.corpus is not None:
                put("corpus", checked)

    @classmethod
    def from_options(cls, **options: Any) -> ShortTrainConfig:
        """The config from YAML-style keyword options; an unknown key is one error naming it and the closest."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, 1)) else k
                     for k in unknown]
            raise FlashsearchError(f"quality: short_train does not take option(s) {', '.join(hints)}; it takes: "
                                   f"{', '.join(known)}")
        return cls(**options)

    @property
    def corpus_name(self) -> str | None:
        """The named corpus trained on (None when data_path or shards are given)."""
        if self.data_path is not None or self.shards is not None:
            return None
        from .corpus import DEFAULT_CORPUS

        return self.corpus or DEFAULT_CORPUS

    @property
    def autocast_dtype(self) -> Any:
        """The dtype training autocasts to (torch.bfloat16), or None for fp32."""
        import torch

        on_cuda = self.device.split(":")[0] == "cuda"
        return torch.bfloat16 if self.precision == "bf16" or (self.precision == "auto" and on_cuda) else None

    @property
    def fast_cpu(self) -> bool:
        """Whether the fast path applies: CPU training only (on CUDA the fused kernels already do its job)."""
        return self.fast and self.device.split(":")[0] == "cpu"

    @property
    def effective_weight_decay(self) -> float:
        # Weight normalization fixes the norms of the matrices, so decay would only fight it (paper: no decay).
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.weight_norm else 0.1

    def identity(self) -> dict[str, Any]:
        """Every setting, with the defaults that depend on others resolved: what a cache key or a checkpoint
        header must hold, so that a changed default never matches an old result."""
        ident = {**dataclasses.asdict(self), "corpus": self.corpus_name, "weight_decay": self.effective_weight_decay}
        if self.shards is not None:  # what the folder holds, not only where it is: re-prepared shards differ
            from flashsearch.data.shards import read_manifest

            try:
                ident["shards_fingerprint"] = read_manifest(self.shards)["fingerprint"]
            except FlashsearchError:  # not prepared (yet): reading the data says so, in one line
                ident["shards_fingerprint"] = None
        return ident


__all__ = ["ShortTrainConfig"]
