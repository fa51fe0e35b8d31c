"""Shared test inputs: the genomes tests build models from, and the tiny run every end-to-end test starts from.

Import them in a test file with `from factories import tiny_genome` (tests/conftest.py puts tests/ on sys.path).

Genome sizes, smallest first:
- tiny_genome: CPU-sized (d_model 64, 4 query / 2 KV heads of 16, vocab 101) with small chunks and states, so a
  forward, a decode or a few training steps take milliseconds.
- every_operator_genome: tiny_genome with each built-in token mixer once, each followed by an FFN.
- awkward_genome: the operator tests' sizes, non-powers of two everywhere (d_model 48, 3 query heads x 24, 1 KV
  head, vocab 97), so that two dimensions mixed up cannot hide behind equal sizes.
- full_size_genome: any layer list at a real width with the 1B family's head shape (head_dim 128, 4 query heads
  per KV head) and vocabulary; build it on the meta device or hand it to a latency predictor.
- flash_1b_genome: the released Nemotron-Flash-1B (search_spaces/reference/nemotron_flash_1b.yaml).

`op_options` given to a factory is merged per operator over its defaults: op_options={"swa": {"window": 9}}
changes the window and keeps the small Mamba2. Genome.with_options changes one operator's options afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from flashsearch.config import BudgetConfig, Ladder, RayConfig, RunConfig, SearchConfig
from flashsearch.genome import Genome

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DIR = ROOT / "tests" / "plugins"          # importable modules that are not part of flashsearch
REFERENCE_DIR = ROOT / "search_spaces" / "reference"
HYBRID_YAML = str(ROOT / "search_spaces" / "hybrid_1b.yaml")
FLASH_1B_YAML = REFERENCE_DIR / "nemotron_flash_1b.yaml"

# Overrides of HYBRID_YAML for a tiny, fast search: 5 trials of proxy training on a few thousand tokens, in-process
# (no Ray), one fidelity.
TINY_RUN = ["search.fidelity=single", "search.trials=5", "search.population=3", "search.sample_size=2",
            "search.workers=1", "ray.address=local", "budget.tokens=4096", "quality.seq_len=32",
            "quality.batch_size=4", "quality.eval_batches=2", "space.max_blocks_per_stage=2", "export_top=2"]

# Every built-in token mixer, in registry order (tests/test_kernels.py checks the registry holds exactly these).
BUILTIN_MIXERS = ("attention", "swa", "mamba2", "deltanet", "gated_deltanet", "gla")
# DeltaNet, Mamba2 and attention, each followed by an FFN: the smallest hybrid with the three mixer families.
HYBRID_LAYERS = ("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn")

TINY_VOCAB = 101
# Short test sequences: 16-token chunks give several chunks; small Mamba2 state and heads; a window that wraps.
TINY_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "mamba2": {"d_state": 16, "head_dim": 16, "chunk_size": 16},
    "deltanet": {"chunk_size": 16},
    "gated_deltanet": {"chunk_size": 16},
    "gla": {"chunk_size": 16},
    "swa": {"window": 6},
}

# Mamba2: d_inner 96 = 8 heads x 12 in 2 groups, odd d_state; a window shorter than the long test sequences.
# DeltaNet, Gated DeltaNet and GLA keep their defaults (3 heads x 24 from the genome).
AWKWARD_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "mamba2": {"d_state": 10, "head_dim": 12, "n_groups": 2},
    "swa": {"window": 20},
}


def merge_options(base: Mapping[str, Mapping[str, Any]],
                  changes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """`base` with each operator's options in `changes` merged over it (one level deep)."""
    merged = {op: dict(o) for op, o in base.items()}
    for op, o in (changes or {}).items():
        merged[op] = {**merged.get(op, {}), **o}
    return merged


def tiny_genome(layer_types: Sequence[str] = HYBRID_LAYERS, *, d_model: int = 64, n_heads: int = 4,
                n_kv_heads: int = 2, head_dim: int = 16, ffn_ratio: float = 3.0, vocab_size: int = TINY_VOCAB,
                op_options: Mapping[str, Mapping[str, Any]] | None = None) -> Genome:
    """A CPU-sized genome (any field can be changed, to a bad value too: Genome validates it)."""
    return Genome(layer_types=tuple(layer_types), d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                  head_dim=head_dim, ffn_ratio=ffn_ratio, vocab_size=vocab_size,
                  op_options=merge_options(TINY_OPTIONS, op_options))


def every_operator_genome(mixers: Sequence[str] = BUILTIN_MIXERS, **kw: Any) -> Genome:
    """tiny_genome with [mixer, ffn] for each of `mixers` (every built-in token mixer by default)."""
    return tiny_genome(tuple(t for op in mixers for t in (op, "ffn")), **kw)


def awkward_genome(layer_types: Sequence[str] = ("attention", "ffn"), *,
                   op_options: Mapping[str, Mapping[str, Any]] | None = None) -> Genome:
    """Operator-test sizes: d_model 48, 3 query heads x 24 with 1 KV head (GQA), FFN 120, vocab 97 (see
    AWKWARD_OPTIONS for the operators' own)."""
    return Genome(layer_types=tuple(layer_types), d_model=48, n_heads=3, n_kv_heads=1, head_dim=24, ffn_ratio=2.5,
                  vocab_size=97, op_options=merge_options(AWKWARD_OPTIONS, op_options))


def full_size_genome(layer_types: Sequence[str] = HYBRID_LAYERS, d_model: int = 2048, **kw: Any) -> Genome:
    """`layer_types` at width d_model with heads of 128 (d_model / 128 query heads, a KV head per 4), SwiGLU
    3 x d_model and the 131072-token vocabulary of the 1B family. kw: other Genome fields (op_options, ...)."""
    fields: dict[str, Any] = dict(n_heads=max(1, d_model // 128), n_kv_heads=max(1, d_model // 512), head_dim=128,
                                  ffn_ratio=3.0, vocab_size=131072)
    fields.update(kw)
    return Genome(layer_types=tuple(layer_types), d_model=d_model, **fields)


def flash_1b_genome() -> Genome:
    """Nemotron-Flash-1B as released: 24 operators at d_model 2048 (about 0.96 B parameters)."""
    from flashsearch.builders import load_genome     # the config stack, only for the tests that want it

    return load_genome(FLASH_1B_YAML)


# ---- runs that drive the search loop directly (search/driver.py run_search) ------------------------------------
def run_config(trials: int, workers: int = 1, *, address: str | None = "local", retries: int = 0,
               ladder: Ladder | None = None, num_cpus_per_trial: float = 1.0, num_gpus_per_trial: float = 0.0,
               **search: Any) -> RunConfig:
    """A RunConfig for `trials` candidates, `workers` in flight, in-process workers by default (address="local"),
    no retries unless asked; `ladder` switches multi-fidelity on; other keywords are SearchConfig fields."""
    budget = BudgetConfig() if ladder is None else BudgetConfig(tokens=ladder.tokens[-1], rungs=list(ladder.tokens),
                                                                eta=ladder.eta)
    return RunConfig(search=SearchConfig(trials=trials, workers=workers, retries=retries,
                                         fidelity="single" if ladder is None else "multi", **search),
                     ray=RayConfig(address=address, num_cpus_per_trial=num_cpus_per_trial,
                                   num_gpus_per_trial=num_gpus_per_trial),
                     budget=budget)
