"""The names of what a search writes into its Optuna study: one place, so the writer and every reader agree.

A study is the search's single source of truth (and what optuna-dashboard shows), so these names are a file
format: renaming one makes older run directories unreadable. Values are JSON.
"""

from __future__ import annotations

# ---- trial user attributes, written by the driver (search/driver.py) ------------------------------------------
GENOME = "genome"                       # the evaluated genome, canonical JSON
GENOME_ID = "genome_id"                 # its stable id (set at ask time, so samplers can avoid in-flight duplicates)
LATENCY_SOURCE = "latency_source"       # where the latency value came from (e.g. "roofline:h100")
METRICS = "metrics"                     # the evaluator's extra metrics (params, curve, kernel path, ...)
EVAL_SECONDS = "eval_seconds"           # wall seconds the evaluation took (0 for a cached replay)
WORKER_NODE = "worker_node"             # the Ray node it ran on
CACHED_FROM = "cached_from"             # a replay: the trial number whose result was reused
PROPOSED_PARAMS = "proposed_params"     # what the sampler proposed, when repair changed it
ERROR = "error"                         # FAILED trials: one line saying why
ERROR_KIND = "error_kind"               # FAILED trials: the failure class (search/failures.py)
ERROR_DETAIL = "error_detail"           # FAILED trials: the worker's traceback or log tail
RETRY_OF = "retry_of"                   # a retry: the number of the trial that failed
ATTEMPT = "attempt"                     # 1 = first try; retries count up
SEED = "seed"                           # an enqueued seed genome: its index in search.seeds

# ---- multi-fidelity (search/rungs.py) --------------------------------------------------------------------------
RUNG = "rung"                           # index of the rung this trial trained at
TOP_RUNG = "top_rung"                   # index of the ladder's last rung
CANDIDATE = "candidate"                 # promotions: the screening trial's number

# ---- trial system attributes, written by the aging sampler (search/aging.py) --------------------------------
AGING_ORIGIN = "aging:origin"           # "random" | "mutation" | "random-dedup"
AGING_PARENT = "aging:parent"           # parent trial number (mutations)
AGING_MUTATION = "aging:mutation"       # the mutated parameter name (mutations)

# ---- study user attributes --------------------------------------------------------------------------------------
FINGERPRINT = "flashsearch_fingerprint"  # the run's definition; a resume with another is refused (runner.py)
SEEDS_ENQUEUED = "flashsearch:seeds_enqueued"  # seeds are enqueued once per study (search/recovery.py)
REFERENCES = "flashsearch:references"   # predicted latency of the reference architectures (references.py)
