"""The norm registry: names, aliases, specs, kwarg checking and error messages (DESIGN.md §3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_norm.norms import (
    build_norm,
    check_kwargs,
    get_norm,
    list_norms,
    register_norm,
)
from robustbench_norm.norms.registry import check_norm_name

BUILTINS = [
    "batchnorm",
    "batchnorm_test_stats",
    "contextnorm",
    "contextnorm_patches",
    "groupnorm",
    "ilm_gn",
    "ilm_in",
    "ilm_ln",
    "instancenorm",
    "layernorm",
    "lcn",
    "localnorm",
    "mixturenorm",
    "positionalnorm",
    "switchnorm",
]
ALIASES = {"bn": "batchnorm", "gn": "groupnorm", "in": "instancenorm", "ln": "layernorm", "pn": "positionalnorm"}
CONTEXT_NORMS = {"contextnorm": "input", "contextnorm_patches": "tokens"}
EVAL_MODES = {
    "batchnorm": ("running_stats", "test_batch_stats"),
    "batchnorm_test_stats": ("test_batch_stats",),
    "localnorm": ("batch", "single", "single_voting", "voting"),
    "contextnorm": ("cn", "cn+"),
    "contextnorm_patches": ("cn", "cn+"),
}


def _builtin_names() -> list[str]:
    return [name for name in list_norms() if get_norm(name).source == "builtin"]


def test_list_norms_holds_exactly_the_design_names() -> None:
    assert _builtin_names() == BUILTINS
    assert list_norms() == sorted(list_norms())


@pytest.mark.parametrize("alias, name", sorted(ALIASES.items()))
def test_aliases_resolve(alias: str, name: str) -> None:
    assert get_norm(alias).name == name
    assert get_norm(alias.upper()) is get_norm(name)
    assert alias not in list_norms()


def test_names_are_canonicalised() -> None:
    assert get_norm("Batchnorm-Test-Stats").name == "batchnorm_test_stats"
    assert get_norm("  ILM-GN ").name == "ilm_gn"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown norm 'nosuchnorm'") as error:
        get_norm("nosuchnorm")
    assert all(name in str(error.value) for name in BUILTINS)
    assert "bn->batchnorm" in str(error.value)
    with pytest.raises(ValueError, match="known norms"):
        build_norm("nosuchnorm", 8)


def test_unknown_kwarg_lists_valid_kwargs() -> None:
    with pytest.raises(ValueError, match=r"'contextnorm'.*\['bogus'\].*valid kwargs.*embedding_dim.*num_contexts"):
        build_norm("contextnorm", 3, bogus=1)
    with pytest.raises(ValueError, match=r"\['window'\]"):
        check_kwargs("ilm_gn", {"num_groups": 4, "window": 3})
    check_kwargs("ilm_gn", {"num_groups": 4})  # accepted


@pytest.mark.parametrize("name", BUILTINS)
def test_spec_fields(name: str) -> None:
    spec = get_norm(name)
    assert spec.name == name and spec.source == "builtin" and spec.paper
    assert spec.needs_context == (name in CONTEXT_NORMS)
    assert spec.placement == CONTEXT_NORMS.get(name, "all")
    assert spec.eval_modes == EVAL_MODES.get(name, ("standard",))
    assert spec.batch_stats_at_test == (name in ("batchnorm_test_stats", "localnorm"))
    assert not (spec.batch_stats_at_test and spec.batch_independent)
    check_kwargs(name, spec.default_kwargs)  # defaults are kwargs the factory accepts


@pytest.mark.parametrize("name", ["contextnorm", "contextnorm_patches", "ilm_gn", "ilm_in", "ilm_ln"])
def test_batch_independent_families(name: str) -> None:
    assert get_norm(name).batch_independent


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_builds_with_its_defaults(name: str) -> None:
    layer = build_norm(name, 32)
    assert isinstance(layer, nn.Module)
    assert all(p.dtype == torch.float32 for p in layer.parameters())


def test_build_norm_passes_kwargs() -> None:
    layer = build_norm("contextnorm", 3, num_contexts=5, embedding_dim=7)
    assert (layer.num_contexts, layer.embedding_dim) == (5, 7)


def test_register_rejects_taken_names_and_bad_placements() -> None:
    with pytest.raises(ValueError, match="'contextnorm' is already registered"):
        register_norm("ContextNorm")(nn.Identity)
    with pytest.raises(ValueError, match="'bn' is already registered"):
        register_norm("brand_new_norm", aliases=("bn",))(nn.Identity)
    with pytest.raises(ValueError, match=r"'everywhere' is not one of \('all', 'input', 'tokens'\)"):
        register_norm("brand_new_norm", placement="everywhere")(nn.Identity)
    assert "brand_new_norm" not in list_norms()


@pytest.mark.parametrize("name, canonical", [("Batch-Norm2", "batch_norm2"), (" gn ", "gn"), ("2d_norm", "2d_norm")])
def test_check_norm_name_returns_the_canonical_name(name: str, canonical: str) -> None:
    assert check_norm_name(name) == canonical


@pytest.mark.parametrize("name", ["a.b", "a b", "<b>", "-x", "ü", "", None])
def test_check_norm_name_rejects_anything_but_letters_digits_underscores(name) -> None:
    with pytest.raises(ValueError, match=r"norm name .* is invalid"):
        check_norm_name(name)


def test_builtin_eval_modes_are_known_to_predict() -> None:
    from robustbench_norm.evaluation.modes import EVAL_MODES

    for name in BUILTINS:
        assert set(get_norm(name).eval_modes) <= set(EVAL_MODES), name


def test_every_norm_with_unknown_eval_modes_is_named_and_unregistered() -> None:
    register_norm("registry_bad_one", eval_modes=("nope",))(nn.Identity)
    register_norm("registry_good", eval_modes=("standard",), source="test")(nn.Identity)
    register_norm("registry_bad_two", aliases=("rbt",), eval_modes=("standard", "never"))(nn.Identity)
    with pytest.raises(ValueError, match=r"'registry_bad_one' .*\['nope'\]; norm 'registry_bad_two' .*\['never'\]"):
        list_norms()
    names = list_norms()
    assert "registry_good" in names and "registry_bad_one" not in names and "registry_bad_two" not in names
    with pytest.raises(ValueError, match="unknown norm 'rbt'"):
        get_norm("rbt")
