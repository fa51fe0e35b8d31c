"""Building blocks of the paper studies in experiments/: rank agreement, the depth-width law, a resumable
pool of short-training jobs, and the header every result file carries (command, runtime, machine)."""
