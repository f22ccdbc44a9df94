"""robustbench-norm: a robustness and domain-adaptation benchmark for normalization layers.

Data path: norm layer (``norms``) -> model (``models``) -> scenario (``suites/``, trained by ``training``,
scored by ``evaluation``) -> result row and table (``results``).
"""

__version__ = "0.1.0"
