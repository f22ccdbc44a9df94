"""Embedded data sets, containers, conversion and night rendering (robustbench_norm.data).

References are independent: float64 NumPy loops, PIL's resize, scikit-learn's own arrays and closed-form values of
the documented night formula on constant images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_norm.data import (
    DatasetBundle,
    ImageSet,
    list_datasets,
    load_dataset,
    night,
    night_rendering,
    stratified_subset,
)
from robustbench_norm.data.compose import contrasting_colours, gaussian_blur, luminance
from robustbench_norm.data.convert import convert_images

GENERATED = ("street_digits", "shapes")


def _bilinear_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Float64 bilinear upsampling, half-pixel centres, source coordinates clamped at 0 (align_corners=False)."""
    source = image.shape[0]
    out = np.zeros((size, size))
    coords = []
    for i in range(size):
        x = max((i + 0.5) * source / size - 0.5, 0.0)
        low = int(np.floor(x))
        coords.append((low, min(low + 1, source - 1), x - low))
    for i, (r0, r1, wr) in enumerate(coords):
        for j, (c0, c1, wc) in enumerate(coords):
            top = image[r0, c0] * (1 - wc) + image[r0, c1] * wc
            bottom = image[r1, c0] * (1 - wc) + image[r1, c1] * wc
            out[i, j] = top * (1 - wr) + bottom * wr
    return out


# ---------------------------------------------------------------- containers


def test_imageset_validates_and_converts():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    image_set = ImageSet(images, labels, "toy", contexts=torch.tensor([1, 0, 1, 0]))
    assert len(image_set) == 4
    floats = image_set.as_float()
    assert floats.dtype == torch.float32
    assert torch.allclose(floats * 255, images.double().float())
    part = image_set.subset([3, 0])
    assert torch.equal(part.images, images[[3, 0]])
    assert part.labels.tolist() == [1, 0] and part.contexts.tolist() == [0, 1]
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), labels, "bad")
    with pytest.raises(ValueError, match="labels"):
        ImageSet(images, labels.int(), "bad")
    with pytest.raises(ValueError, match=r"contexts .*\(4,\)"):
        ImageSet(images, labels, "bad", contexts=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expected"):
        DatasetBundle("bad", image_set, image_set, 3, channels=1, image_size=5)


def test_stratified_subset_proportions_and_seed():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    image_set = ImageSet(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels, "toy")
    part = stratified_subset(image_set, 20, seed=1)
    assert torch.bincount(part.labels).tolist() == [12, 6, 2]
    assert torch.equal(part.images, stratified_subset(image_set, 20, seed=1).images)
    assert not torch.equal(part.images, stratified_subset(image_set, 20, seed=2).images)
    assert len(set(part.images.flatten().tolist())) == 20  # no repeats
    odd = stratified_subset(image_set, 7, seed=0)  # exact quotas 4.2, 2.1, 0.7 -> 4, 2, 1
    assert torch.bincount(odd.labels).tolist() == [4, 2, 1]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="1..100"):
            stratified_subset(image_set, bad, seed=0)


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_faithful():
    from sklearn.datasets import load_digits

    raw = load_digits()
    bundle = load_dataset("digits")
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (10, 1, 28)
    assert bundle.train.images.shape == (1437, 1, 28, 28) and bundle.train.images.dtype == torch.uint8
    # Stratified: each class's test count is within 1 of its share of 360.
    full = np.bincount(raw.target, minlength=10)
    test_counts = torch.bincount(bundle.test.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - full * 360 / len(raw.target)) <= 1)
    # Fixed: the seed does not change the split.
    other = load_dataset("digits", seed=7)
    assert torch.equal(other.train.images, bundle.train.images) and torch.equal(other.test.labels, bundle.test.labels)
    # Faithful: every image is a scikit-learn digit scaled to 0..255, upsampled to 20x20, padded by 4.
    everything = torch.cat([bundle.train.images, bundle.test.images]).flatten(1).numpy().astype(np.int64)
    for index in (0, 5, 1796):
        expected = np.zeros((28, 28))
        expected[4:24, 4:24] = _bilinear_reference(raw.images[index] * 255.0 / 16.0, 20)
        expected = np.clip(np.round(expected), 0, 255).astype(np.int64).ravel()
        matches = np.nonzero(np.abs(everything - expected).max(axis=1) <= 1)[0]
        assert len(matches) >= 1, f"sklearn digit {index} not found in the split"
    total = torch.cat([bundle.train.labels, bundle.test.labels])
    assert torch.equal(torch.bincount(total), torch.from_numpy(full))


def test_digits_subset_sizes_are_stratified():
    bundle = load_dataset("digits", train_size=100, test_size=50, seed=3)
    assert (len(bundle.train), len(bundle.test)) == (100, 50)
    assert torch.bincount(bundle.train.labels, minlength=10).min() >= 9
    assert torch.bincount(bundle.test.labels, minlength=10).min() >= 4


# ---------------------------------------------------------------- generated sets


@pytest.mark.parametrize("name", GENERATED)
def test_generated_sets_shapes_balance_and_determinism(name):
    bundle = load_dataset(name, seed=3, train_size=50, test_size=23)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (10, 3, 32)
    assert bundle.train.images.shape == (50, 3, 32, 32) and bundle.train.images.dtype == torch.uint8
    assert bundle.test.images.shape == (23, 3, 32, 32)
    assert bundle.train.labels.dtype == torch.int64 and bundle.train.contexts is None
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [5] * 10
    assert torch.bincount(bundle.test.labels, minlength=10).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    again = load_dataset(name, seed=3, train_size=50, test_size=23)
    assert torch.equal(again.train.images, bundle.train.images) and torch.equal(again.test.labels, bundle.test.labels)
    other = load_dataset(name, seed=4, train_size=50, test_size=23)
    assert not torch.equal(other.train.images, bundle.train.images)
    assert not torch.equal(bundle.train.images[:23], bundle.test.images)  # independent train / test streams
    # Real images, not blank: every image has visible structure.
    assert bundle.train.as_float().flatten(1).std(dim=1).min() > 0.03


def test_generated_default_train_size():
    bundle = load_dataset("shapes", test_size=10, train_size=None)
    assert len(bundle.train) == 2000 and len(bundle.test) == 10


# ---------------------------------------------------------------- conversion


def test_conversion_grey_to_rgb_and_resize_match_pil():
    bundle = load_dataset("digits", train_size=20, test_size=10)
    rgb = load_dataset("digits", train_size=20, test_size=10, image_size=32, channels=3)
    assert rgb.train.images.shape == (20, 3, 32, 32) and (rgb.channels, rgb.image_size) == (3, 32)
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 1])
    assert torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 2])
    small = load_dataset("digits", train_size=20, test_size=10, image_size=16)
    for image, resized in zip(bundle.train.images[:, 0], small.train.images[:, 0]):
        reference = np.asarray(Image.fromarray(image.numpy()).resize((16, 16), Image.BILINEAR), dtype=np.int64)
        assert np.abs(reference - resized.numpy().astype(np.int64)).max() <= 1


def test_conversion_rgb_to_grey_is_luminance():
    images = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    grey = convert_images(images, image_size=4, channels=1)
    array = images.numpy().astype(np.float64)
    for n in range(3):
        for i in range(4):
            for j in range(4):
                expected = 0.299 * array[n, 0, i, j] + 0.587 * array[n, 1, i, j] + 0.114 * array[n, 2, i, j]
                assert abs(grey[n, 0, i, j].item() - expected) <= 0.5 + 1e-9
    shrunk = load_dataset("street_digits", train_size=10, test_size=10, channels=1, image_size=28)
    assert shrunk.train.images.shape == (10, 1, 28, 28)


def test_load_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid names are .*street_digits"):
        load_dataset("nope")
    with pytest.raises(ValueError, match=r"channels=2 .*\(1, 3\)"):
        load_dataset("digits", channels=2)
    with pytest.raises(ValueError, match="train_size=0"):
        load_dataset("shapes", train_size=0)
    with pytest.raises(ValueError, match="1..360"):
        load_dataset("digits", test_size=361)
    names = list_datasets()
    for name in ("digits", "street_digits", "shapes", "street_digits_night", "mnist", "svhn", "cifar10", "cifar100",
                 "daynight"):
        assert name in names


# ---------------------------------------------------------------- compositing helpers


def test_gaussian_blur_matches_float64_loop():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((3, 2, 9, 9), generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.4, 1.0, 2.5], dtype=torch.float64)
    blurred = gaussian_blur(images, sigma).numpy()
    array = images.numpy()
    for n in range(3):
        taps = np.exp(-np.arange(-3, 4) ** 2 / (2 * sigma[n].item() ** 2))
        taps /= taps.sum()
        for c in range(2):
            padded = np.pad(array[n, c], 3, mode="reflect")
            rows = np.array([[sum(taps[k] * padded[i, j + k] for k in range(7)) for j in range(9)] for i in range(15)])
            expected = np.array([[sum(taps[k] * rows[i + k, j] for k in range(7)) for j in range(9)]
                                 for i in range(9)])
            np.testing.assert_allclose(blurred[n, c], expected, atol=1e-12)


def test_contrasting_colours_hit_the_target_luminance():
    reference = torch.tensor([0.5, 0.1, 0.9, 0.5])
    generator = torch.Generator().manual_seed(0)
    colours = contrasting_colours(reference, 0.3, 0.3, generator)
    assert colours.shape == (4, 3) and colours.min() >= 0 and colours.max() <= 1
    values = luminance(colours)
    assert torch.allclose((values - reference).abs(), torch.full((4,), 0.3), atol=1e-5)
    assert values[1] > reference[1] and values[2] < reference[2]  # the only side with room


# ---------------------------------------------------------------- night rendering


def test_night_rendering_follows_the_documented_formula():
    count = 20
    white = ImageSet(torch.full((count, 3, 32, 32), 255, dtype=torch.uint8), torch.arange(count) % 10, "white")
    grey = ImageSet(torch.full((count, 3, 32, 32), 128, dtype=torch.uint8), torch.arange(count) % 10, "grey")
    night_white = night_rendering(white, seed=5).as_float().double().mean(dim=(2, 3))
    night_grey = night_rendering(grey, seed=5).as_float().double().mean(dim=(2, 3))
    red, green, blue = night_white.unbind(1)
    # Tint: per image mean(B) / mean(R) = 1 / 0.55 and mean(G) / mean(R) = 0.75 / 0.55.
    assert torch.allclose(blue / red, torch.full_like(red, 1 / 0.55), rtol=0.04)
    assert torch.allclose(green / red, torch.full_like(red, 0.75 / 0.55), rtol=0.04)
    # Exposure: blue of a white image is e_n in [0.35, 0.65], and differs between images.
    assert blue.min() > 0.33 and blue.max() < 0.67 and blue.std() > 0.03
    # Gamma 2: same seed -> same exposures, so a mid-grey image is (128 / 255)^2 as bright as a white one.
    assert torch.allclose(night_grey[:, 2] / blue, torch.full_like(blue, (128 / 255) ** 2), rtol=0.04)
    assert night.GAMMA == 2.0 and night.TINT_RGB == (0.55, 0.75, 1.0)


def test_night_rendering_is_darker_bluer_seeded_and_keeps_labels():
    day = load_dataset("street_digits", seed=1, train_size=40, test_size=10).train
    day = ImageSet(day.images, day.labels, day.name, contexts=torch.zeros(40, dtype=torch.int64))
    dark = night_rendering(day, seed=0)
    assert dark.images.shape == day.images.shape and dark.images.dtype == torch.uint8
    assert torch.equal(dark.labels, day.labels) and torch.equal(dark.contexts, day.contexts)
    day_means, dark_means = day.as_float().mean(dim=(0, 2, 3)), dark.as_float().mean(dim=(0, 2, 3))
    assert dark_means.mean() < 0.6 * day_means.mean()
    assert dark_means[2] / dark_means[0] > 1.3 * day_means[2] / day_means[0]
    assert torch.equal(night_rendering(day, seed=0).images, dark.images)
    assert not torch.equal(night_rendering(day, seed=1).images, dark.images)
    loaded = load_dataset("street_digits_night", seed=1, train_size=40, test_size=10)
    assert loaded.train.name == "street_digits_night/train" and len(loaded.test) == 10
    assert torch.bincount(loaded.train.labels).tolist() == [4] * 10
    assert loaded.train.as_float().mean() < 0.6 * day.as_float().mean()
    assert not torch.equal(loaded.train.labels, day.labels)  # other scenes than the day set at the same seed
    assert torch.equal(load_dataset("street_digits_night", seed=1, train_size=40, test_size=10).train.images,
                       loaded.train.images)
