"""Normalization layers and their registry.

Importing this package registers the built-in families (one module each); installed plugins are
discovered on first lookup. See :mod:`robustbench_norm.norms.registry` for the protocol.
"""

from robustbench_norm.norms import (  # noqa: F401
    context,
    ilm,
    lcn,
    localnorm,
    mixture,
    standard,
    switchable,
)
from robustbench_norm.norms.registry import (
    ENTRY_POINT_GROUP,
    NormSpec,
    build_norm,
    check_kwargs,
    get_norm,
    list_norms,
    register_norm,
    reload_plugins,
)
from robustbench_norm.norms.routing import set_context_inference, use_context

__all__ = [
    "ENTRY_POINT_GROUP",
    "NormSpec",
    "build_norm",
    "check_kwargs",
    "get_norm",
    "list_norms",
    "register_norm",
    "reload_plugins",
    "set_context_inference",
    "use_context",
]
