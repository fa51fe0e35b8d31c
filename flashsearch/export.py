"""Export the best searched architectures as Hugging Face model folders.

    export_top(study, run_dir / "export", top=3)
      -> export/1-<genome_id>/config.json, export/2-<genome_id>/config.json, ...

config.json is exactly what `FlashsearchConfig.save_pretrained` writes (model_type "flashsearch_hybrid",
hidden_size, num_attention_heads, layer_types, ...) plus a `flashsearch` block with the search result (rank, loss,
latency, genome). After `import flashsearch`, transformers' Auto classes know the model type:

    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config)        # config-only folder: randomly initialized model
    model = AutoModelForCausalLM.from_pretrained(folder)    # needs weights: export_top(..., weights=True)

A search trains only small proxies, so there are no trained full-size weights to export: `weights=True` writes
the freshly initialized full-size model (HybridLM's own init, seeded by the genome id) as model.safetensors, a
ready-to-train checkpoint that `from_pretrained` loads. It costs 4 bytes per parameter per folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import optuna
import pandas as pd

from flashsearch.atomic import write_text_atomic
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.model.hf_config import ARCHITECTURES, MODEL_TYPE, FlashsearchConfig
from flashsearch.pareto import rank_front
from flashsearch.trials import trials_frame

_EXPORT_DIR = re.compile(r"^\d+-[0-9a-f]{12}$")  # folders this module writes (and may replace)


def hf_config_dict(genome: Genome) -> dict[str, Any]:
    """The Hugging Face config of a genome, as config.json holds it (without flashsearch metadata); JSON-ready.

    Built by FlashsearchConfig itself, so this dict and the config class cannot disagree.
    """
    return FlashsearchConfig.from_genome(genome).to_diff_dict()


def genome_from_hf_config(config: Mapping[str, Any] | FlashsearchConfig) -> Genome:
    """Inverse of hf_config_dict: a config.json dict (extra keys such as the flashsearch block are ignored) or a
    FlashsearchConfig -> Genome."""
    if not isinstance(config, FlashsearchConfig):
        fields = set(FlashsearchConfig.__dataclass_fields__)
        config = FlashsearchConfig(**{k: v for k, v in dict(config).items() if k in fields})
    return config.to_genome()


def _write_weights(config: FlashsearchConfig, genome: Genome, folder: Path) -> None:
    """Save a freshly initialized full-size model into folder (model.safetensors, config.json,
    generation_config.json): written to a staging subfolder, then moved in file by file, config.json last, so a
    folder never pairs a config with half a checkpoint."""
    import torch

    from flashsearch.model.hf import FlashsearchForCausalLM

    staging = folder / ".weights-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(genome.id, 16) % 2**31)  # same genome -> same checkpoint
        model = FlashsearchForCausalLM(config)
    model.save_pretrained(staging)
    for f in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
        os.replace(f, folder / f.name)
    staging.rmdir()


def export_top(study_or_df: optuna.Study | pd.DataFrame, out_dir: str | os.PathLike, top: int, *,
               target_latency: float | None = None, weights: bool = False) -> list[Path]:
    """Write config.json for the `top` best Pareto-front trials into out_dir/<rank>-<genome_id>/
    (with weights=True also model.safetensors of the randomly initialized full-size model, see module doc).

    Ranking: lowest loss first; with a latency target, trials meeting it come first. Earlier exports in
    out_dir (folders named <rank>-<genome_id>) are replaced, so ranks never mix two runs.
    Returns the written folders, best first.
    """
    if top < 1:
        raise FlashsearchError(f"--top must be >= 1, got {top}")
    target_latency = None if target_latency is None else float(target_latency)
    df = study_or_df if isinstance(study_or_df, pd.DataFrame) else trials_frame(study_or_df)
    ranked = rank_front(df, target_latency).head(top)
    if ranked.empty:
        if "top_rung" in df.columns and df["top_rung"].notna().any() and (df["state"] == "COMPLETE").any():
            raise FlashsearchError("no candidate has reached the top rung yet (multi-fidelity: only top-rung results "
                                   "are exported); resume the search with more search.trials")
        raise FlashsearchError("no complete trials to export; run the search first (flashsearch run ...)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_dir() and _EXPORT_DIR.match(old.name):
            shutil.rmtree(old)
    written: list[Path] = []
    for rank, row in enumerate(ranked.itertuples(index=False), start=1):
        genome = Genome.from_json(row.genome_json)
        meta = {
            "rank": rank,
            "trial_number": int(row.number),
            "loss": float(row.quality),
            "latency": float(row.latency),
            "latency_source": row.latency_source,
            "meets_target": bool(row.meets_target) if target_latency is not None else None,
            "target_latency": target_latency,
            "genome_id": genome.id,
            "genome": genome.to_dict(),
            "weights": "random init" if weights else None,
        }
        config = FlashsearchConfig.from_genome(genome, flashsearch=meta)
        folder = out / f"{rank}-{genome.id}"
        folder.mkdir(parents=True, exist_ok=True)
        if weights:
            _write_weights(config, genome, folder)
        else:  # the same text config.save_pretrained would write, but atomically
            write_text_atomic(folder / "config.json", config.to_json_string(use_diff=True))
        written.append(folder)
    return written


__all__ = ["export_top", "hf_config_dict", "genome_from_hf_config", "MODEL_TYPE", "ARCHITECTURES"]
