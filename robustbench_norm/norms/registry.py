"""Name registry of normalization layers (timm's convention: lowercase names, ``num_features`` first).

A norm is a factory ``factory(num_features, **kwargs) -> nn.Module`` registered under a lowercase name,
together with a :class:`NormSpec` that tells a benchmark scenario what the layer needs:

* ``batch_stats_at_test`` - the layer normalises with statistics of the test batch in eval mode;
* ``batch_independent``   - a sample's output never depends on the other samples of its batch;
* ``needs_context``       - the layer reads a per-sample context id (see :mod:`robustbench_norm.norms.context`);
* ``placement``           - where a model puts it: after every conv (``"all"``), once on the input image
  (``"input"``, the rest of the net keeps BatchNorm), or on ViT patch tokens (``"tokens"``);
* ``eval_modes``          - the test-time procedures a scenario evaluates (see ``robustbench_norm.evaluation``);
* ``default_kwargs``      - kwargs used when the caller gives none.

Third-party layers join through the entry-point group ``robustbench_norm.norms``: the entry point's name
is the norm's name and its object is the factory. The factory may carry a ``NORM_SPEC`` dict with any of
the fields above; otherwise the conservative defaults of :class:`NormSpec` apply.

Validation (a bad spec fails before any model is built or trained, with a ``ValueError``): names and
aliases must be ASCII letters, digits and underscores after canonicalisation (:func:`check_norm_name`;
they become parts of file names and of published pages), not taken, with a known placement and a
non-empty list of eval modes. That every eval mode is one
:data:`robustbench_norm.evaluation.modes.EVAL_MODES` knows is checked at the first lookup after the
registration (:func:`list_norms`, :func:`get_norm`, :func:`build_norm`; an entry-point plugin is
registered during that lookup): the evaluation module imports the norm modules, so it cannot be imported
while the built-ins register. A norm that fails this check is unregistered again.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Callable, Literal

from torch import nn

ENTRY_POINT_GROUP = "robustbench_norm.norms"

NormFactory = Callable[..., nn.Module]
Placement = Literal["all", "input", "tokens"]
PLACEMENTS: tuple[str, ...] = ("all", "input", "tokens")
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class NormSpec:
    """What a suite needs to know about a registered norm."""

    name: str
    factory: NormFactory
    batch_stats_at_test: bool = False
    batch_independent: bool = False
    needs_context: bool = False
    placement: Placement = "all"
    eval_modes: tuple[str, ...] = ("standard",)
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    source: str = "builtin"

    def accepted_kwargs(self) -> tuple[str, ...] | None:
        """Keyword names the factory accepts besides ``num_features`` (None: it takes ``**kwargs``)."""
        parameters = list(inspect.signature(self.factory).parameters.values())[1:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return tuple(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)


_NORMS: dict[str, NormSpec] = {}
_ALIASES: dict[str, str] = {}
_UNCHECKED_MODES: list[str] = []  # norms whose eval_modes await the first lookup
_plugins_loaded = False


def canonical_name(name: str) -> str:
    """Lowercase, with dashes read as underscores: ``"Batchnorm-Test-Stats"`` -> ``"batchnorm_test_stats"``."""
    return name.strip().lower().replace("-", "_")


def check_norm_name(name: str) -> str:
    """The canonical form of ``name`` (:func:`canonical_name`) if it is ASCII letters, digits and underscores
    starting with a letter or digit; else ``ValueError``."""
    key = canonical_name(name) if isinstance(name, str) else ""
    if not _VALID_NAME.match(key):
        raise ValueError(f"norm name {name!r} is invalid: use ASCII letters, digits and underscores (dashes "
                         "are read as underscores), starting with a letter or a digit")
    return key


def register_norm(
    name: str, *, aliases: tuple[str, ...] = (), **spec_fields: Any
) -> Callable[[NormFactory], NormFactory]:
    """Class/function decorator that registers a norm factory under ``name`` (and ``aliases``)."""

    def decorator(factory: NormFactory) -> NormFactory:
        _add(NormSpec(name=check_norm_name(name), factory=factory, **spec_fields), aliases)
        return factory

    return decorator


def _add(spec: NormSpec, aliases: tuple[str, ...] = ()) -> None:
    keys = [check_norm_name(spec.name), *map(check_norm_name, aliases)]
    if spec.placement not in PLACEMENTS:
        raise ValueError(f"norm '{spec.name}': placement {spec.placement!r} is not one of {PLACEMENTS}")
    modes = spec.eval_modes
    if isinstance(modes, str) or not modes or not all(isinstance(mode, str) for mode in modes):
        raise ValueError(f"norm '{spec.name}': eval_modes must be a non-empty list of mode names, got {modes!r}")
    taken = set(_NORMS) | set(_ALIASES)
    for key in keys:
        if key in taken:
            raise ValueError(f"norm name '{key}' is already registered")
    _NORMS[keys[0]] = replace(spec, name=keys[0], eval_modes=tuple(modes))
    _ALIASES.update({key: keys[0] for key in keys[1:]})
    _UNCHECKED_MODES.append(keys[0])


def _check_eval_modes() -> None:
    """Check the eval_modes of the norms registered since the last check: every norm with a mode ``predict``
    does not know is unregistered, and one ``ValueError`` names them, their unknown modes and the valid ones."""
    if not _UNCHECKED_MODES:
        return
    pending = list(_UNCHECKED_MODES)
    _UNCHECKED_MODES.clear()  # before the import: a lookup while evaluation imports finds nothing to check
    from robustbench_norm.evaluation.modes import EVAL_MODES  # imports the norm modules: not at registration

    problems = []
    for spec in [_NORMS[name] for name in pending if name in _NORMS]:
        unknown = [mode for mode in spec.eval_modes if mode not in EVAL_MODES]
        if unknown:
            _remove(spec.name)
            problems.append(f"norm '{spec.name}' ({spec.source}) declares unknown eval mode(s) {unknown}")
    if problems:
        raise ValueError(f"{'; '.join(problems)}; valid modes: {EVAL_MODES}")


def _remove(name: str) -> None:
    del _NORMS[name]
    for alias in [alias for alias, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        name = canonical_name(entry_point.name)
        if name in _NORMS or name in _ALIASES:
            continue  # a built-in name wins over a plugin of the same name
        factory = entry_point.load()
        declared = dict(getattr(factory, "NORM_SPEC", {}))
        source = f"plugin:{entry_point.dist.name}" if entry_point.dist else "plugin"
        try:
            _add(NormSpec(name=name, factory=factory, source=source, **declared))
        except ValueError as error:
            raise ValueError(f"norm plugin {entry_point.value!r} ({source}): {error}") from error


def reload_plugins() -> None:
    """Discover entry points again (after a ``pip install`` in a running process, e.g. in tests)."""
    global _plugins_loaded
    for name in [n for n, spec in _NORMS.items() if spec.source.startswith("plugin")]:
        _remove(name)
    _plugins_loaded = False
    _load_plugins()


def list_norms() -> list[str]:
    """Canonical names of every registered norm (built-ins and installed plugins), sorted."""
    _load_plugins()
    _check_eval_modes()
    return sorted(_NORMS)


def get_norm(name: str) -> NormSpec:
    """The :class:`NormSpec` of ``name`` (or of an alias). Unknown names raise ``ValueError``."""
    _load_plugins()
    _check_eval_modes()
    key = canonical_name(name)
    key = _ALIASES.get(key, key)
    if key not in _NORMS:
        known = ", ".join(list_norms())
        aliases = ", ".join(f"{a}->{t}" for a, t in sorted(_ALIASES.items()))
        raise ValueError(f"unknown norm {name!r}; known norms: {known} (aliases: {aliases})")
    return _NORMS[key]


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any kwarg that the norm's factory does not accept."""
    spec = get_norm(name)
    accepted = spec.accepted_kwargs()
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"norm '{spec.name}' got unknown kwarg(s) {unknown}; valid kwargs: {sorted(accepted)}"
        )


def build_norm(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Instantiate the norm ``name`` for ``num_features`` channels; ``kwargs`` override its defaults."""
    spec = get_norm(name)
    check_kwargs(spec.name, kwargs)
    return spec.factory(num_features, **{**spec.default_kwargs, **kwargs})

