"""Known architectures drawn on the Pareto plots, so a user sees where Flash-1B, Qwen3-0.6B and Llama-3.2-1B sit.

Their latency is predicted once, at the start of a run, by the run's own latency predictor and workload, and kept
in the study (user attribute `flashsearch:references`), so `flashsearch report` redraws them from the study alone.
They have no proxy loss unless the search evaluated them (as seeds): the report then marks those trials,
otherwise it draws a labelled vertical line at their latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from flashsearch.errors import FlashsearchError
from flashsearch.search import attrs

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "search_spaces" / "reference"
REFERENCE_MODELS: tuple[tuple[str, str], ...] = (
    ("Flash-1B", "nemotron_flash_1b.yaml"),
    ("Qwen3-0.6B", "qwen3_0_6b.yaml"),
    ("Llama-3.2-1B", "llama3_2_1b.yaml"),
)


def predict_references(predictor: Any, workload: Any, source: str,
                       models: Sequence[tuple[str, str | Path]] = REFERENCE_MODELS) -> tuple[list[dict], list[str]]:
    """[{name, genome_id, latency, latency_source}] for the reference models, and a note for each one skipped.

    Skipped: a predictor that times real models (`measured`: a full-size model per reference would cost minutes),
    a reference file that is not installed, or a predictor that cannot handle it.
    """
    from flashsearch.builders import load_genome

    if source.startswith("measured"):
        return [], ["reference models are not drawn on the plots under latency=measured (timing each full-size "
                    "model would take minutes); use a predictor (roofline, lut, learned) to see them"]
    marks, notes = [], []
    for name, file in models:
        path = Path(file) if Path(file).is_absolute() else REFERENCE_DIR / file
        if not path.is_file():
            continue  # installed without the search_spaces folder: nothing to draw
        try:
            genome = load_genome(path)
            latency = float(predictor.predict(genome, workload))
        except (FlashsearchError, ValueError, KeyError, TypeError, RuntimeError) as e:
            notes.append(f"reference {name} is not drawn: its latency cannot be predicted ({type(e).__name__}: {e})")
            continue
        marks.append({"name": name, "genome_id": genome.id, "latency": latency, "latency_source": source})
    return marks, notes


def references_of(study: Any) -> list[dict]:
    """The reference marks a run stored in its study ([] for studies written before they existed)."""
    marks = study.user_attrs.get(attrs.REFERENCES) or []
    return [dict(m) for m in marks if isinstance(m, Mapping) and {"name", "latency"} <= set(m)]


__all__ = ["predict_references", "references_of", "REFERENCE_MODELS", "REFERENCE_DIR"]
