"""A user's own latency predictors, outside the flashsearch package: latency proportional to parameters."""

from flashsearch.model import count_parameters


class ParamsPredictor:
    source = "plugin:params"

    def __init__(self, seconds_per_param: float = 1e-8):
        self.seconds_per_param = seconds_per_param

    def predict(self, genome, workload) -> float:
        return count_parameters(genome) * self.seconds_per_param * workload.decode_tokens / 8192


class FittedParamsPredictor(ParamsPredictor):
    """The same model with its rate fitted on measurements: it declares what `flashsearch latency validate` needs
    (a training split, and how to build itself from it) on the class, as a shipped predictor does."""

    source = "plugin:fitted-params"
    fits_on_measurements = True

    @classmethod
    def for_validation(cls, ctx) -> "FittedParamsPredictor":
        unit = cls(seconds_per_param=1.0)
        rates = [seconds / unit.predict(g, ctx.workload) for g, seconds in ctx.train]
        model = cls(seconds_per_param=sum(rates) / len(rates))
        model.train_mape = sum(abs(model.predict(g, ctx.workload) - s) / s for g, s in ctx.train) / len(ctx.train)
        return model
