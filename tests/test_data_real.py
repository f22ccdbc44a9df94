"""Real data-set loading (robustbench_norm.data.real) on tiny files in the real formats, written by the tests.

Formats: MNIST idx files, SVHN .mat (scipy), CIFAR-10/100 Python pickles, day/night PNG folders. torchvision checks
the MD5 of every SVHN and CIFAR file; the writers in ``tests/real_format_files.py`` substitute the tiny files' MD5s
(see there), so the loading code under test is the real torchvision code, checksum verification included. One test
per format checks that without the substitution the loader refuses the files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_norm.data import DatasetNotFoundError, load_dataset
from tests.real_format_files import (
    patch_cifar_checksums,
    patch_svhn_checksums,
    write_cifar,
    write_daynight,
    write_mnist,
    write_svhn,
)

REAL = ("mnist", "svhn", "cifar10", "cifar100", "daynight")


# ---------------------------------------------------------------- loading


def test_mnist_idx_files(tmp_path):
    written = write_mnist(tmp_path, np.random.default_rng(0))
    bundle = load_dataset("mnist", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (10, 1, 28)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = written[prefix]
        loaded = getattr(bundle, split)
        assert loaded.images.shape == (len(labels), 1, 28, 28) and loaded.images.dtype == torch.uint8
        assert np.array_equal(loaded.images[:, 0].numpy(), images)
        assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == labels.tolist()
        assert loaded.contexts is None and loaded.name == f"mnist/{split}"
    converted = load_dataset("mnist", data_dir=tmp_path, channels=3, image_size=32, train_size=10)
    assert converted.train.images.shape == (10, 3, 32, 32) and converted.test.images.shape == (5, 3, 32, 32)


def test_svhn_mat_files_map_label_10_to_0(tmp_path, monkeypatch):
    written = write_svhn(tmp_path, np.random.default_rng(1))
    patch_svhn_checksums(monkeypatch, tmp_path)
    bundle = load_dataset("svhn", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (10, 3, 32)
    for split in ("train", "test"):
        x, y = written[split]
        loaded = getattr(bundle, split)
        assert loaded.images.shape == (x.shape[3], 3, 32, 32)
        for n in range(x.shape[3]):
            for c in range(3):
                assert np.array_equal(loaded.images[n, c].numpy(), x[:, :, c, n])
        expected = [0 if value == 10 else int(value) for value in y[:, 0]]
        assert loaded.labels.tolist() == expected
    assert bundle.train.labels[0] == 0 and bundle.train.labels[8] == 0


def test_svhn_files_failing_the_checksum_are_refused(tmp_path):
    write_svhn(tmp_path, np.random.default_rng(1))
    with pytest.raises(RuntimeError, match="MD5"):
        load_dataset("svhn", data_dir=tmp_path)


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path, monkeypatch, hundred):
    written = write_cifar(tmp_path, np.random.default_rng(2), hundred)
    patch_cifar_checksums(monkeypatch, tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    bundle = load_dataset(name, data_dir=tmp_path)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (100 if hundred else 10, 3, 32)
    for split in ("train", "test"):
        entries, loaded = written[split], getattr(bundle, split)
        data = np.concatenate([entry["data"] for entry in entries])
        assert loaded.images.shape == (len(data), 3, 32, 32)
        for n in range(len(data)):  # a CIFAR row is 1024 red, then 1024 green, then 1024 blue values, row-major
            for c in range(3):
                assert np.array_equal(loaded.images[n, c].numpy().ravel(), data[n, 1024 * c:1024 * (c + 1)])
        key = "fine_labels" if hundred else "labels"
        assert loaded.labels.tolist() == [label for entry in entries for label in entry[key]]
        if hundred:
            assert loaded.contexts.dtype == torch.int64
            assert loaded.contexts.tolist() == [label for entry in entries for label in entry["coarse_labels"]]
        else:
            assert loaded.contexts is None
    assert len(bundle.train) == (6 if hundred else 30) and len(bundle.test) == 6


def test_cifar_subset_is_stratified(tmp_path, monkeypatch):
    write_cifar(tmp_path, np.random.default_rng(3), hundred=False)
    patch_cifar_checksums(monkeypatch, tmp_path, hundred=False)
    full = load_dataset("cifar10", data_dir=tmp_path)
    part = load_dataset("cifar10", data_dir=tmp_path, train_size=10, seed=4)
    assert len(part.train) == 10 and len(part.test) == 6
    shares = torch.bincount(full.train.labels, minlength=10).double() * 10 / 30
    assert (torch.bincount(part.train.labels, minlength=10).double() - shares).abs().max() < 1


def test_cifar_files_failing_the_checksum_are_refused(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(2), hundred=False)
    with pytest.raises(RuntimeError, match="MD5"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_daynight_folders(tmp_path):
    written = write_daynight(tmp_path, np.random.default_rng(4))
    bundle = load_dataset("daynight", data_dir=tmp_path)
    assert (bundle.num_classes, bundle.channels, bundle.image_size) == (2, 3, 8)
    for split, count in (("train", 12), ("test", 8)):
        loaded = getattr(bundle, split)
        assert len(loaded) == count and loaded.contexts.dtype == torch.int64
        for image, label, context in zip(loaded.images, loaded.labels.tolist(), loaded.contexts.tolist()):
            assert written[image.numpy().tobytes()] == (split, label, context)
        assert torch.bincount(loaded.contexts).tolist() == [count // 2, count // 2]
    assert load_dataset("daynight", data_dir=tmp_path, image_size=4).train.images.shape == (12, 3, 4, 4)


def test_daynight_rejects_mismatched_classes_and_sizes(tmp_path):
    write_daynight(tmp_path, np.random.default_rng(5))
    extra = tmp_path / "daynight" / "train" / "night" / "emu"
    extra.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(extra / "0.png")
    with pytest.raises(ValueError, match="same classes"):
        load_dataset("daynight", data_dir=tmp_path)
    (extra / "0.png").unlink()
    extra.rmdir()
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "daynight" / "test" / "day" / "cat" / "9.png")
    with pytest.raises(ValueError, match="9x9"):
        load_dataset("daynight", data_dir=tmp_path)


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize("name", REAL)
def test_missing_data_names_the_path(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(name, data_dir=tmp_path)
    assert isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    assert str(tmp_path) in message and "--data-dir" in message
    if name != "daynight":
        assert "--download" in message


def test_missing_data_dir_says_how_to_get_it():
    with pytest.raises(DatasetNotFoundError, match="--data-dir"):
        load_dataset("cifar10")


def test_partly_missing_mnist_names_the_missing_file(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(6))
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
