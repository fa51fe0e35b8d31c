"""A user's own latency predictor, outside the flashsearch package: latency proportional to parameters."""

from flashsearch.model import count_parameters


class ParamsPredictor:
    source = "plugin:params"

    def __init__(self, seconds_per_param: float = 1e-8):
        self.seconds_per_param = seconds_per_param

    def predict(self, genome, workload) -> float:
        return count_parameters(genome) * self.seconds_per_param * workload.decode_tokens / 8192
