"""Export the best searched architectures as Hugging Face style model folders.

    export_top(study, run_dir / "export", top=3)
      -> export/1-<genome_id>/config.json, export/2-<genome_id>/config.json, ...

config.json speaks transformers' language (hidden_size, num_attention_heads, layer_types, ...) with
model_type "flashsearch_hybrid"; flashsearch.model registers that type with transformers' Auto classes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import optuna
import pandas as pd

from flashsearch.archive import rank_front, trials_frame, write_text_atomic
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome

MODEL_TYPE = "flashsearch_hybrid"
ARCHITECTURES = ["FlashsearchForCausalLM"]
_EXPORT_DIR = re.compile(r"^\d+-[0-9a-f]{12}$")  # folders this module writes (and may replace)


def hf_config_dict(genome: Genome) -> dict[str, Any]:
    """The Hugging Face config fields of a genome (without flashsearch metadata); JSON-ready."""
    g = genome.to_dict()
    return {
        "model_type": MODEL_TYPE,
        "architectures": list(ARCHITECTURES),
        "hidden_size": genome.d_model,
        "num_attention_heads": genome.n_heads,
        "num_key_value_heads": genome.n_kv_heads,
        "head_dim": genome.head_dim,
        "intermediate_size": genome.ffn_hidden,
        "ffn_ratio": genome.ffn_ratio,  # kept so the genome round-trips exactly (intermediate_size is rounded)
        "vocab_size": genome.vocab_size,
        "layer_types": list(genome.layer_types),
        "num_hidden_layers": genome.n_layers,
        "tie_word_embeddings": True,
        "op_options": g["op_options"],
    }


def genome_from_hf_config(config: Mapping[str, Any]) -> Genome:
    """Inverse of hf_config_dict (accepts a dict or anything with the same keys)."""
    ratio = config.get("ffn_ratio")
    if ratio is None:
        ratio = float(config["intermediate_size"]) / float(config["hidden_size"])
    return Genome(layer_types=tuple(config["layer_types"]), d_model=int(config["hidden_size"]),
                  n_heads=int(config["num_attention_heads"]), n_kv_heads=int(config["num_key_value_heads"]),
                  head_dim=int(config["head_dim"]), ffn_ratio=float(ratio), vocab_size=int(config["vocab_size"]),
                  op_options=dict(config.get("op_options") or {}))


def export_top(study_or_df: optuna.Study | pd.DataFrame, out_dir: str | os.PathLike, top: int, *,
               target_latency: float | None = None) -> list[Path]:
    """Write config.json for the `top` best Pareto-front trials into out_dir/<rank>-<genome_id>/.

    Ranking: lowest loss first; with a latency target, trials meeting it come first. Earlier exports in
    out_dir (folders named <rank>-<genome_id>) are replaced, so ranks never mix two runs.
    Returns the written folders, best first.
    """
    if top < 1:
        raise FlashsearchError(f"--top must be >= 1, got {top}")
    target_latency = None if target_latency is None else float(target_latency)
    if isinstance(study_or_df, pd.DataFrame):
        df = study_or_df
    else:
        df = trials_frame(study_or_df)
        if target_latency is None and study_or_df.user_attrs.get("target_latency") is not None:
            target_latency = float(study_or_df.user_attrs["target_latency"])
    ranked = rank_front(df, target_latency).head(top)
    if ranked.empty:
        raise FlashsearchError("no complete trials to export; run the search first (flashsearch run ...)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_dir() and _EXPORT_DIR.match(old.name):
            shutil.rmtree(old)
    written: list[Path] = []
    for rank, row in enumerate(ranked.itertuples(index=False), start=1):
        genome = Genome.from_json(row.genome_json)
        config = hf_config_dict(genome)
        config["flashsearch"] = {
            "rank": rank,
            "trial_number": int(row.number),
            "loss": float(row.quality),
            "latency": float(row.latency),
            "latency_source": row.latency_source,
            "meets_target": bool(row.meets_target) if target_latency is not None else None,
            "target_latency": target_latency,
            "genome_id": genome.id,
            "genome": genome.to_dict(),
        }
        folder = out / f"{rank}-{genome.id}"
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        written.append(folder)
    return written


__all__ = ["export_top", "hf_config_dict", "genome_from_hf_config", "MODEL_TYPE", "ARCHITECTURES"]
