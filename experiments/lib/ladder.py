"""Genomes trained through a multi-fidelity ladder, for the studies that ask what each rung ranks.

Each genome goes through every rung exactly as a promoted candidate does in a search (rung k+1 continues from
rung k's checkpoint; warmup-stable-decay), and the loss and CPU seconds of each rung land in a CSV the moment the
genome is done. Rows are keyed by (genome, seed, ladder@device, settings), where settings hashes the proxy's
resolved configuration and the ladder (experiments/lib/cachekey.py), so ladder_fidelity and proxy_fidelity share
one cache, an interrupted study trains only what is missing, and a changed proxy default retrains.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from flashsearch.genome import Genome

from experiments.lib.jobs import curve_json

# The reference architectures a fidelity study adds to its random draws (besides the YAML's own seeds): the
# genomes the issue and the paper compare, so the study says how they rank, not only how random draws do.
REFERENCE_ARCHITECTURES = ("search_spaces/reference/nemotron_flash_1b.yaml",
                           "search_spaces/reference/gated_deltanet_ffn_1b.yaml")
KEY_COLUMNS = ["genome_id", "seed", "ladder", "settings"]
CURVE = "curve"  # JSON [[step, bits/byte], ...]; caches written before it have no such column


def study_genomes(config_path: str, n_random: int, seed: int = 0,
                  extra: Sequence[str] = REFERENCE_ARCHITECTURES) -> list[tuple[Genome, str]]:
    """(genome, kind): n_random uniform draws from the YAML's space, then its seed architectures and `extra`
    (each once; kind is the file's stem)."""
    from flashsearch.builders import load_genome
    from flashsearch.config import load_config
    from experiments.lib.common import sample_genomes

    cfg = load_config(config_path)
    out = [(g, "random") for g in sample_genomes(config_path, n_random, seed)]
    seen = {g.id for g, _ in out}
    for path in [Path(config_path).parent / s for s in cfg.search.seeds] + [Path(p) for p in extra]:
        g = load_genome(path)
        if g.id not in seen:
            out.append((g, path.stem))
            seen.add(g.id)
    return out


def ladder_key(tokens: Sequence[int], device: str = "cpu") -> str:
    return "-".join(str(t) for t in tokens) + f"@{device}"


def ladder_settings(proxy: Mapping[str, Any], tokens: Sequence[int]) -> str:
    """Hash of everything that changes a ladder's losses: the proxy's resolved settings (seed included) and the
    rungs."""
    from experiments.lib.cachekey import proxy_digest

    return proxy_digest(proxy, list(tokens))


def _train_ladder(wired: tuple) -> dict[str, Any]:
    """One genome through every rung, continuing from checkpoints; the loss and CPU seconds of each."""
    import torch

    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    torch.set_num_threads(1)
    genome_json, kwargs, tokens, name, key, settings = wired
    g = Genome.from_json(genome_json)
    proxy = ShortTrain(**{**kwargs, "threads": 1})
    row: dict[str, Any] = {"genome_id": g.id, "seed": proxy.seed, "ladder": key, "settings": settings,
                           "name": name,
                           "layers": g.n_layers, "d_model": g.d_model}
    with tempfile.TemporaryDirectory(prefix="ladder-") as ckpt:
        for k, t in enumerate(tokens):
            t0 = time.process_time()
            r = proxy.evaluate(g, Budget(tokens=t, ladder=tuple(tokens), checkpoint_dir=ckpt))
            row[f"loss{k}"], row[f"cpu{k}"] = float(r.loss), round(time.process_time() - t0, 2)
    # the top rung's curve holds the whole run (a continued rung carries the curve of the rungs below)
    row[CURVE] = curve_json(r.curve)
    return row


def run_ladders(genomes: Sequence[tuple[Genome, str]], proxy: Mapping[str, Any], tokens: Sequence[int],
                seeds: Sequence[int], path: str | Path, workers: int = 2, train: bool = True) -> pd.DataFrame:
    """Train what the CSV at `path` lacks (unless train=False); return its rows for these genomes, seeds and
    ladder, one per (genome, seed), with columns loss0.., cpu0.. (CPU seconds of each rung)."""
    path = Path(path)
    device = str(proxy.get("device", "cpu"))
    key = ladder_key(tokens, device)
    fields = KEY_COLUMNS + ["name", "layers", "d_model"] + [f"{p}{k}" for k in range(len(tokens))
                                                          for p in ("loss", "cpu")]
    fields.append(CURVE)
    done = _read(path) if path.exists() else pd.DataFrame(columns=fields)
    if len(done) and list(done.columns) == fields[:-1]:
        fields = fields[:-1]  # a cache from before curves were kept: append in its own columns
    if list(done.columns) != fields and len(done):
        why = ("predates settings hashes in cache keys, so its rows cannot be matched to the settings that made "
               "them" if "settings" not in done.columns else f"holds another ladder's columns ({list(done.columns)})")
        raise ValueError(f"{path} {why}: move it away or set another cache path to start over")
    settings = {s: ladder_settings({**proxy, "seed": s}, tokens) for s in seeds}
    have = set(zip(done["genome_id"], done["seed"], done["ladder"], done["settings"]))
    todo = [(g.to_json(), {**proxy, "seed": s}, tuple(tokens), name, key, settings[s]) for s in seeds
            for g, name in genomes if (g.id, s, key, settings[s]) not in have] if train else []
    print(f"ladder: {len(genomes)} genomes x seeds {list(seeds)}, {len(todo)} to train, ladder {list(tokens)}",
          file=sys.stderr, flush=True)
    if todo:
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f, mp.get_context("spawn").Pool(workers) as pool:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if f.tell() == 0:
                w.writeheader()
            for i, row in enumerate(pool.imap_unordered(_train_ladder, todo), start=1):
                w.writerow(row)
                f.flush()  # a killed study keeps every finished genome
                print(f"  [{i}/{len(todo)}] {row['genome_id']} seed {row['seed']} losses "
                      + " -> ".join(f"{row[f'loss{k}']:.3f}" for k in range(len(tokens)))
                      + f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    if not path.exists():
        return pd.DataFrame(columns=fields)
    every = _read(path).drop_duplicates(KEY_COLUMNS)
    ids = {g.id for g, _ in genomes}
    mine = pd.Series([settings.get(int(s)) == h for s, h in zip(every["seed"], every["settings"])], index=every.index)
    return every[mine & (every["ladder"] == key) & every["seed"].isin(list(seeds)) & every["genome_id"].isin(ids)]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"genome_id": str, "settings": str, "ladder": str})


def zero_cost_baselines(config_path: str, genomes: Sequence[Genome]) -> pd.DataFrame:
    """Per genome id: the YAML's predicted decode latency and the decoder's non-embedding parameter count (the
    LiteTransformerSearch proxy), the rankings a user would try before training anything."""
    from flashsearch.builders import build_latency
    from flashsearch.config import load_config
    from flashsearch.model import count_parameters

    cfg = load_config(config_path)
    workload, predictor = cfg.workload, build_latency(cfg)
    return pd.DataFrame({"latency": [float(predictor.predict(g, workload)) for g in genomes],
                         "params": [count_parameters(g) - g.vocab_size * g.d_model for g in genomes]},
                        index=pd.Index([g.id for g in genomes], name="genome_id"))


def replay_promotions(rows: pd.DataFrame, ladder) -> list:
    """The search's promotion rule (search/rungs.py) run on finished ladder trainings, as if the genomes had
    arrived in row order: the RungResults a search would have produced (candidate = row position). `rows` needs
    loss0.. and latency columns; `ladder` is the search's Ladder."""
    from flashsearch.search.rungs import RungResult, promotions

    losses = rows[[f"loss{k}" for k in range(len(ladder.tokens))]].to_numpy(dtype=float)
    latency = rows["latency"].to_numpy(dtype=float)
    results: list[RungResult] = []
    attempted: set[tuple[int, int]] = set()
    for c in range(len(rows)):
        results.append(RungResult(c, 0, float(losses[c, 0]), float(latency[c])))
        while due := promotions(results, attempted, ladder):
            for cand, k in due:
                attempted.add((cand, k))
                results.append(RungResult(cand, k, float(losses[cand, k]), float(latency[cand])))
    return results
