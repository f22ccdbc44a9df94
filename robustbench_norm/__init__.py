"""robustbench-norm: a robustness and domain-adaptation benchmark for normalization layers.

Data path: norm layer (``norms``) -> model (``models``) -> scenario (``scenarios``, trained by ``training``
with the recipe of ``training.recipes``, scored by ``evaluation``) -> result row and table (``results``).

``robustbench_norm.run(scenario, norm, ...)`` trains (or loads) and scores one norm on one scenario;
``robustbench_norm.evaluate(model, ...)`` scores a model you trained yourself. Both return a
``pandas.DataFrame`` of result rows.
"""

__version__ = "0.1.0"


def run(*args, **kwargs):
    """See :func:`robustbench_norm.scenarios.run` (imported lazily: ``import robustbench_norm`` stays light)."""
    from robustbench_norm.scenarios import run as run_scenario

    return run_scenario(*args, **kwargs)


def evaluate(*args, **kwargs):
    """See :func:`robustbench_norm.scenarios.evaluate`."""
    from robustbench_norm.scenarios import evaluate as evaluate_model

    return evaluate_model(*args, **kwargs)
