"""Former home of the trials table, the Pareto front and atomic writes; import from their modules instead:

  flashsearch.atomic   atomic file writes
  flashsearch.trials   the trials table read back from the study, and which rows count
  flashsearch.pareto   Pareto front, its ranking, hypervolume

Kept only while tests and experiments outside the package still import it.
"""

from flashsearch.atomic import atomic_path, write_text_atomic
from flashsearch.pareto import hypervolume, pareto_front, pareto_mask, rank_front
from flashsearch.trials import COLUMNS, complete_trials, published, trials_frame, write_trials

__all__ = ["trials_frame", "write_trials", "complete_trials", "published", "pareto_front", "pareto_mask", "rank_front",
           "hypervolume", "atomic_path", "write_text_atomic", "COLUMNS"]
