"""Tiny files in the real data sets' formats (MNIST idx, SVHN .mat, CIFAR pickles, day/night PNG folders).

torchvision checks the MD5 of every SVHN and CIFAR file against the official release; ``patch_*_checksums``
substitute the tiny files' MD5s in torchvision's checksum tables (through pytest's monkeypatch, undone after
the test), so the loading code under test is the real torchvision code, checksum verification included.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from robustbench_norm._torchvision import import_torchvision


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- writers (the formats' specifications)


def write_mnist(root: Path, rng: np.random.Generator, train: int = 12, test: int = 5
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images, labels = _pixels(rng, count, 28, 28), rng.integers(0, 10, size=count).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())
        written[prefix] = (images, labels)
    return written


def write_svhn(root: Path, rng: np.random.Generator, train: int = 9, test: int = 4
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "svhn"
    folder.mkdir(parents=True)
    written = {}
    for split, count in (("train", train), ("test", test)):
        x = _pixels(rng, 32, 32, 3, count)  # (H, W, C, N), as in the official files
        y = np.resize(np.array([10, 1, 2, 3, 4, 5, 6, 7, 10], dtype=np.uint8), count)[:, None]  # 10 = digit 0
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    return written


def patch_svhn_checksums(monkeypatch, root: Path) -> None:
    svhn = import_torchvision().datasets.SVHN
    for split in ("train", "test"):
        url, filename, _ = svhn.split_list[split]
        monkeypatch.setitem(svhn.split_list, split, [url, filename, _md5(root / "svhn" / filename)])


def _pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def write_cifar(root: Path, rng: np.random.Generator, hundred: bool, per_file: int = 6,
                test_per_file: int | None = None) -> dict[str, dict]:
    """``per_file`` images in every training file, ``test_per_file`` (default ``per_file``) in the test file."""
    cifar = import_torchvision().datasets.CIFAR100 if hundred else import_torchvision().datasets.CIFAR10
    folder = root / cifar.base_folder
    folder.mkdir(parents=True)
    written: dict[str, dict] = {"train": [], "test": []}
    for split, file_list in (("train", cifar.train_list), ("test", cifar.test_list)):
        for filename, _ in file_list:
            count = per_file if split == "train" or test_per_file is None else test_per_file
            entry = {"batch_label": filename, "data": _pixels(rng, count, 3072)}
            if hundred:
                entry["fine_labels"] = rng.integers(0, 100, size=count).tolist()
                entry["coarse_labels"] = rng.integers(0, 20, size=count).tolist()
            else:
                entry["labels"] = rng.integers(0, 10, size=count).tolist()
            _pickle(folder / filename, entry)
            written[split].append(entry)
    meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]} \
        if hundred else {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_file}
    _pickle(folder / cifar.meta["filename"], meta)
    return written


def patch_cifar_checksums(monkeypatch, root: Path, hundred: bool) -> None:
    cifar = import_torchvision().datasets.CIFAR100 if hundred else import_torchvision().datasets.CIFAR10
    folder = root / cifar.base_folder
    for attribute in ("train_list", "test_list"):
        table = [[filename, _md5(folder / filename)] for filename, _ in getattr(cifar, attribute)]
        monkeypatch.setattr(cifar, attribute, table)
    meta = dict(cifar.meta, md5=_md5(folder / cifar.meta["filename"]))
    monkeypatch.setattr(cifar, "meta", meta)


def write_daynight(root: Path, rng: np.random.Generator, size: int = 8, train: int = 3, test: int = 2
                   ) -> dict[bytes, tuple[str, int, int]]:
    """Write PNGs (``train``/``test`` per class and time of day); returns {pixel bytes (C, H, W): (split, class, context)}."""
    written = {}
    for split, per_class in (("train", train), ("test", test)):
        for time, context in (("day", 0), ("night", 1)):
            for label, name in enumerate(("cat", "dog")):  # ImageFolder sorts class folders: cat = 0, dog = 1
                folder = root / "daynight" / split / time / name
                folder.mkdir(parents=True)
                for index in range(per_class):
                    pixels = _pixels(rng, size, size, 3)
                    Image.fromarray(pixels).save(folder / f"{index}.png")
                    written[pixels.transpose(2, 0, 1).tobytes()] = (split, label, context)
    return written


def write_tiny_real_data(root: Path) -> None:
    """Every real data set of the paper profile, with as few images as its recipes' batches allow.

    The largest batches set the counts: MNIST 128 (batch 100 after the noise recipe's 10 % hold-out; two
    AdaMatch steps of 64), SVHN 192 (AdaMatch's 3 x 64 target batch), CIFAR-10 300 (5 files of 60: batch 256
    after the cifar_mixture recipe's 10 % hold-out), CIFAR-100 240 (its one training file: the ViT's batch
    216 after the 10 % hold-out), day/night 2 classes x 2 times x 32 (batch 128). Test splits are small.
    """
    rng = np.random.default_rng(0)
    write_mnist(root, rng, train=128, test=20)
    write_svhn(root, rng, train=192, test=20)
    write_cifar(root, rng, hundred=False, per_file=60, test_per_file=20)
    write_cifar(root, rng, hundred=True, per_file=240, test_per_file=40)
    write_daynight(root, rng, size=16, train=32, test=4)
