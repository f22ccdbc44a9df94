"""Tests of corruptions/: noise statistics against their definitions, determinism, dtype/device, validation.

The statistical tests recover the noise from the output (``y / x - 1`` on images with known pixel values)
and compare its empirical moments with the distribution named in the definition, within 5 standard
errors (fixed seeds, so the outcome is deterministic; a wrong distribution misses by far more).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import corruptions
from corruptions import (
    AGN_SEVERITIES,
    APN_SEVERITIES,
    MBN_SEVERITIES,
    Corruption,
    additive_gaussian_noise,
    additive_poisson_noise,
    corrupt,
    get_corruption,
    list_corruptions,
    multiplicative_bernoulli_noise,
    register_corruption,
    registry,
)

BUILTINS = ("additive_gaussian_noise", "additive_poisson_noise", "multiplicative_bernoulli_noise")
MID_SEVERITY = {"additive_gaussian_noise": 1.0, "additive_poisson_noise": 0.5, "multiplicative_bernoulli_noise": 0.5}
STAT_SHAPE = (64, 3, 32, 32)  # 196,608 values, 65,536 pixels
Z = 5.0  # tolerance in standard errors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape=(4, 3, 8, 8), dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Pixels in [0.1, 1] (never 0, so dropped pixels are recognisable), from their own generator."""
    return (0.1 + 0.9 * torch.rand(shape, generator=_gen(seed), dtype=torch.float64)).to(dtype)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


def _assert_uncorrelated(noise: torch.Tensor) -> None:
    """Noise (N, C, H, W) is independent across channels, neighbouring pixels and images (|r| < Z/sqrt(n))."""
    pairs = [
        (noise[:, 0], noise[:, 1]),
        (noise[..., :-1], noise[..., 1:]),
        (noise[: len(noise) // 2], noise[len(noise) // 2 :]),
    ]
    for a, b in pairs:
        assert abs(_corr(a, b)) < Z / math.sqrt(a.numel())


# --------------------------------------------------------------------------------------------- AGN


@pytest.mark.parametrize("sigma", [0.2, 2.0])
def test_agn_noise_is_gaussian_with_std_sigma(sigma):
    x = torch.full(STAT_SHAPE, 0.5)
    xi = additive_gaussian_noise(x, sigma, generator=_gen(1)).double() / 0.5 - 1.0
    n = xi.numel()
    assert abs(xi.mean().item()) < Z * sigma / math.sqrt(n)
    assert abs(xi.std().item() - sigma) < Z * sigma / math.sqrt(2 * n)
    # Gaussian shape, not uniform (the authors' code): P(|xi| < sigma) = erf(1 / sqrt 2) = 0.6827 (uniform: 0.577)
    p_one_sigma = math.erf(1 / math.sqrt(2))
    inside = (xi.abs() < sigma).double().mean().item()
    assert abs(inside - p_one_sigma) < Z * math.sqrt(p_one_sigma * (1 - p_one_sigma) / n)
    _assert_uncorrelated(xi)


def test_agn_noise_scales_with_pixel_value():
    """x (1 + xi): the noise of a 0.8 pixel is 4x that of a 0.2 pixel and a 0 pixel stays 0."""
    sigma = 0.5
    x = torch.full(STAT_SHAPE, 0.2)
    x[..., 16:] = 0.8
    x[..., 0] = 0.0
    y = additive_gaussian_noise(x, sigma, generator=_gen(2)).double()
    assert torch.all(y[..., 0] == 0)
    for level, cols in ((0.2, slice(1, 16)), (0.8, slice(16, None))):
        deviation = y[..., cols] - level
        n = deviation.numel()
        assert abs(deviation.std().item() - sigma * level) < Z * sigma * level / math.sqrt(2 * n)
        assert abs(deviation.mean().item()) < Z * sigma * level / math.sqrt(n)


def test_agn_is_not_clipped():
    y = additive_gaussian_noise(torch.full((2, 3, 16, 16), 0.9), 2.0, generator=_gen(3))
    assert y.max() > 1.0 and y.min() < 0.0


# --------------------------------------------------------------------------------------------- APN


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_apn_counts_are_poisson_with_rate_lambda(lam):
    x = torch.full(STAT_SHAPE, 0.5)
    k = additive_poisson_noise(x, lam, generator=_gen(4)).double() / 0.5 - 1.0
    n = k.numel()
    assert torch.equal(k, k.round()) and k.min() >= 0
    assert abs(k.mean().item() - lam) < Z * math.sqrt(lam / n)
    # Var of the sample variance of Poisson(lam): (mu4 - sigma^4) / n = (lam + 2 lam^2) / n
    assert abs(k.var().item() - lam) < Z * math.sqrt((lam + 2 * lam**2) / n)
    p_zero = math.exp(-lam)
    assert abs((k == 0).double().mean().item() - p_zero) < Z * math.sqrt(p_zero * (1 - p_zero) / n)
    _assert_uncorrelated(k)


def test_apn_multiplies_each_pixel_by_one_plus_a_count():
    x = _images(STAT_SHAPE, dtype=torch.float64)
    x[..., 0] = 0.0
    y = additive_poisson_noise(x, 0.5, generator=_gen(5))
    assert torch.all(y[..., 0] == 0)
    factor = y[..., 1:] / x[..., 1:]
    assert torch.allclose(factor, factor.round(), rtol=0, atol=1e-9) and factor.min() >= 1
    assert y.max() > 1.0  # not clipped


# --------------------------------------------------------------------------------------------- MBN


@pytest.mark.parametrize("p", [0.05, 0.5, 0.95])
def test_mbn_drops_whole_pixels_with_probability_p(p):
    x = _images(STAT_SHAPE)
    y = multiplicative_bernoulli_noise(x, p, generator=_gen(6))
    zero = y == 0
    dropped = zero.any(dim=1)
    assert torch.equal(dropped, zero.all(dim=1))  # a pixel is dropped in all channels or in none
    kept = ~dropped.unsqueeze(1).expand_as(x)
    assert torch.equal(y[kept], x[kept])  # kept pixels unchanged
    n = dropped.numel()
    assert abs(dropped.double().mean().item() - p) < Z * math.sqrt(p * (1 - p) / n)


def test_mbn_mask_independent_across_pixels_and_images():
    dropped = (multiplicative_bernoulli_noise(_images(STAT_SHAPE), 0.3, generator=_gen(7)) == 0).all(dim=1)
    for a, b in ((dropped[..., :-1], dropped[..., 1:]), (dropped[:32], dropped[32:])):
        assert abs(_corr(a, b)) < Z / math.sqrt(a.numel())


def test_mbn_p_one_drops_everything():
    y = multiplicative_bernoulli_noise(_images(), 1.0, generator=_gen(8))
    assert torch.equal(y, torch.zeros_like(y))


# --------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", BUILTINS)
def test_same_seed_same_images_different_seed_different_images(name):
    x, s = _images(), MID_SEVERITY[name]
    assert torch.equal(corrupt(name, x, s, seed=11), corrupt(name, x, s, seed=11))
    assert not torch.equal(corrupt(name, x, s, seed=11), corrupt(name, x, s, seed=12))


@pytest.mark.parametrize("name", BUILTINS)
def test_corrupt_equals_function_with_generator_of_that_seed(name):
    x, s = _images(), MID_SEVERITY[name]
    fn = get_corruption(name).fn
    assert torch.equal(corrupt(name, x, s, seed=5), fn(x, s, generator=_gen(5)))


@pytest.mark.parametrize("name", BUILTINS)
def test_generator_advances_between_calls(name):
    x, s, g = _images(), MID_SEVERITY[name], _gen(0)
    fn = get_corruption(name).fn
    assert not torch.equal(fn(x, s, generator=g), fn(x, s, generator=g))


@pytest.mark.parametrize("name", BUILTINS)
def test_global_rng_neither_used_nor_changed(name):
    x, s = _images(), MID_SEVERITY[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torch.get_rng_state()
        first = corrupt(name, x, s, seed=3)
        assert torch.equal(torch.get_rng_state(), state)
        torch.rand(1000)
        assert torch.equal(corrupt(name, x, s, seed=3), first)


# ------------------------------------------------------------------------------------ dtype, device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", BUILTINS)
def test_shape_dtype_device_kept(name, dtype):
    x = _images((3, 1, 5, 7), dtype=dtype)
    y = corrupt(name, x, MID_SEVERITY[name], seed=0)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", BUILTINS)
def test_low_precision_is_float32_result_rounded_once(name, dtype):
    """Documented: noise is drawn and applied in float32 for float16/bfloat16, then rounded once."""
    x = _images(dtype=dtype)
    fn = get_corruption(name).fn
    low = fn(x, MID_SEVERITY[name], generator=_gen(9))
    ref = fn(x.float(), MID_SEVERITY[name], generator=_gen(9)).to(dtype)
    assert torch.equal(low, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", BUILTINS)
def test_cuda_device_kept_and_generator_device_checked(name):
    x, s = _images().cuda(), MID_SEVERITY[name]
    y = corrupt(name, x, s, seed=4)
    assert y.is_cuda and y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, corrupt(name, x, s, seed=4))
    fn = get_corruption(name).fn
    with pytest.raises(ValueError, match="device"):
        fn(x, s, generator=_gen(0))
    with pytest.raises(ValueError, match="device"):
        fn(x.cpu(), s, generator=torch.Generator(device="cuda"))


# ---------------------------------------------------------------------------------------- severity


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("zero", [0, 0.0])
def test_severity_zero_returns_unchanged_copy_without_drawing(name, zero):
    x, g = _images(), _gen(0)
    state = g.get_state()
    y = get_corruption(name).fn(x, zero, generator=g)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("name", BUILTINS)
def test_max_severity_and_whole_grid_accepted(name):
    c = get_corruption(name)
    for s in (*c.severities, c.max_severity):
        assert corrupt(name, _images(), s, seed=0).shape == (4, 3, 8, 8)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("bad", ["negative", "too_large", "nan", "inf", "bool", "str", "none"])
def test_invalid_severity_raises_naming_value_and_range(name, bad):
    c = get_corruption(name)
    value = {
        "negative": -0.1,
        "too_large": c.max_severity + 0.01,
        "nan": float("nan"),
        "inf": float("inf"),
        "bool": True,
        "str": "0.5",
        "none": None,
    }[bad]
    with pytest.raises(ValueError, match=re.escape(repr(value))) as err:
        c.fn(_images(), value, generator=_gen(0))
    assert f"[0, {c.max_severity:g}]" in str(err.value)


def test_max_severities():
    assert get_corruption("agn").max_severity == 5.0
    assert get_corruption("apn").max_severity == 1.0
    assert get_corruption("mbn").max_severity == 1.0


# ------------------------------------------------------------------------------------------- input


@pytest.mark.parametrize("name", BUILTINS)
def test_three_dimensional_images_raise(name):
    with pytest.raises(ValueError, match=re.escape("(3, 8, 8)")):
        get_corruption(name).fn(_images()[0], 0.5, generator=_gen(0))


@pytest.mark.parametrize("name", BUILTINS)
def test_integer_images_raise(name):
    with pytest.raises(ValueError, match="torch.uint8"):
        get_corruption(name).fn(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 0.5, generator=_gen(0))


@pytest.mark.parametrize("name", BUILTINS)
def test_non_tensor_images_and_missing_generator_raise(name):
    fn = get_corruption(name).fn
    with pytest.raises(ValueError, match="ndarray"):
        fn(np.zeros((1, 3, 4, 4), dtype=np.float32), 0.5, generator=_gen(0))
    with pytest.raises(ValueError, match="torch.Generator.*NoneType"):
        fn(_images(), 0.5, generator=None)


# ---------------------------------------------------------------------------------------- registry


def test_authors_severity_grids():
    assert AGN_SEVERITIES == (0, 0.1, 0.2, 0.5, 0.8, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
    assert APN_SEVERITIES == (0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1)
    assert len(MBN_SEVERITIES) == 20
    assert np.allclose(MBN_SEVERITIES, np.arange(20) * 0.05, rtol=0, atol=1e-12)
    for short, grid in (("agn", AGN_SEVERITIES), ("apn", APN_SEVERITIES), ("mbn", MBN_SEVERITIES)):
        assert get_corruption(short).severities == grid


def test_list_and_lookup_by_name_short_name_case_and_dashes():
    assert list_corruptions() == sorted(BUILTINS)
    for name, short in zip(BUILTINS, ("agn", "apn", "mbn")):
        c = get_corruption(name)
        assert c.name == name and c.short_name == short and c.description
        assert get_corruption(short) is c
        assert get_corruption(short.upper()) is c
        assert get_corruption(name.replace("_", "-").title()) is c
    assert corruptions.corrupt is corrupt


@pytest.mark.parametrize("unknown", ["shot_noise", "gaussian_noise", ""])
def test_unknown_name_lists_valid_names(unknown):
    with pytest.raises(ValueError, match=re.escape(repr(unknown))) as err:
        get_corruption(unknown)
    for name, short in zip(BUILTINS, ("agn", "apn", "mbn")):
        assert name in str(err.value) and f"({short})" in str(err.value)
    with pytest.raises(ValueError, match="valid names"):
        corrupt(unknown, _images(), 0.5, seed=0)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "0", None])
def test_corrupt_invalid_seed_raises(seed):
    with pytest.raises(ValueError, match=re.escape(repr(seed))):
        corrupt("agn", _images(), 0.5, seed=seed)


@pytest.fixture
def private_registry(monkeypatch):
    monkeypatch.setattr(registry, "_CORRUPTIONS", dict(registry._CORRUPTIONS))
    monkeypatch.setattr(registry, "_SHORT_NAMES", dict(registry._SHORT_NAMES))


def _invert(images, severity, *, generator):
    return images + severity * (1 - 2 * images)


def test_register_new_corruption(private_registry):
    new = Corruption("inversion", "inv", _invert, (0.0, 1.0), 1.0, "blend towards 1 - x")
    assert register_corruption(new) is new
    assert "inversion" in list_corruptions() and get_corruption("inv") is new
    x = _images()
    assert torch.allclose(corrupt("inv", x, 1.0, seed=0), 1 - x)


@pytest.mark.parametrize("name, short", [("additive_gaussian_noise", "xx"), ("xx", "agn"), ("agn", "yy")])
def test_register_taken_name_raises(private_registry, name, short):
    with pytest.raises(ValueError, match="already registered"):
        register_corruption(Corruption(name, short, _invert, (0.0,), 1.0, "d"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="Inversion"),
        dict(short_name=""),
        dict(severities=(0.0, 0.5, 0.2)),
        dict(severities=(0.1, 0.5)),
        dict(severities=(0.0, 2.0)),
        dict(severities=[0.0, 0.5]),
        dict(max_severity=float("inf")),
        dict(fn="not callable"),
    ],
)
def test_invalid_corruption_record_raises(kwargs):
    fields = dict(name="inversion", short_name="inv", fn=_invert, severities=(0.0, 1.0), max_severity=1.0,
                  description="d")  # fmt: skip
    with pytest.raises(ValueError):
        Corruption(**{**fields, **kwargs})
