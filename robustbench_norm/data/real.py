"""Real data sets read from ``data_dir`` through torchvision's data-set classes; downloads only when asked.

Layouts under ``data_dir`` (torchvision's own, so a folder that torchvision filled with ``download=True`` works):

=========  ===================================================================================================
mnist      ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the idx files, uncompressed)
svhn       ``svhn/{train,test}_32x32.mat`` (the cropped-digits format; label 10 means digit 0)
cifar10    ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (the Python pickles)
cifar100   ``cifar-100-python/{train,test,meta}``; contexts = the 20 coarse superclasses (``coarse_labels``)
daynight   ``daynight/{train,test}/{day,night}/<class>/<image>`` read by ``ImageFolder``; contexts 0 = day,
           1 = night; the class folders must be the same under day and night; images must share one square size
=========  ===================================================================================================

Integrity: torchvision verifies the MD5 of every SVHN and CIFAR file against the official release before it reads
it (MNIST it only checks for presence). We keep that check: files that are present but fail it raise
``RuntimeError`` saying so. (The unit tests write tiny files in these formats and substitute their checksums in
torchvision's tables for the duration of a test; the reading code is the same torchvision code.)

Missing files raise ``DatasetNotFoundError`` (a ``FileNotFoundError``) naming the path looked for and how to get
the data. CIFAR-100's superclasses are read from the ``coarse_labels`` entry of the same pickles torchvision reads,
in the same order (torchvision itself only exposes the fine labels).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from .._torchvision import import_torchvision
from .imageset import DatasetBundle, ImageSet

DAYNIGHT_CONTEXTS = {"day": 0, "night": 1}
_Loaded = TypeVar("_Loaded")


class DatasetNotFoundError(FileNotFoundError):
    """A real data set is not where it was looked for (the message names the path and how to get it)."""


def _require(name: str, data_dir: Path | None, files: Callable[[Path], list[Path]], layout: str) -> Path:
    how = (f"pass --data-dir DIR with DIR/{layout}, or --download (with --data-dir) on a machine with internet "
           f"access" if name != "daynight" else f"pass --data-dir DIR with DIR/{layout} (daynight has no download)")
    if data_dir is None:
        raise DatasetNotFoundError(f"{name}: no data directory was given; {how}")
    root = Path(data_dir).expanduser()
    missing = [path for path in files(root) if not path.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetNotFoundError(f"{name}: not found: looked for {missing[0]}{more}; {how}")
    return root


def _download(name: str, data_dir: Path | None, fetch: Callable[[Path], None]) -> None:
    if data_dir is None:
        raise DatasetNotFoundError(f"{name}: --download needs --data-dir DIR to download into")
    try:
        fetch(Path(data_dir).expanduser())
    except (OSError, RuntimeError) as error:
        raise DatasetNotFoundError(f"{name}: download into {data_dir} failed: {error}") from error


def _read(name: str, root: Path, build: Callable[[], _Loaded]) -> _Loaded:
    try:
        return build()
    except RuntimeError as error:
        raise RuntimeError(
            f"{name}: the files under {root} are present but torchvision refused them ({error}); they are corrupted "
            f"or not the official release (torchvision checks their MD5): delete them and download again"
        ) from error


def _bundle(name: str, train: ImageSet, test: ImageSet, num_classes: int) -> DatasetBundle:
    return DatasetBundle(name, train, test, num_classes, channels=train.images.shape[1],
                         image_size=train.images.shape[2])


def _mnist_files(root: Path) -> list[Path]:
    raw = root / "MNIST" / "raw"
    return [raw / f"{prefix}-{kind}-ubyte" for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]


def load_mnist(data_dir: Path | None, download: bool) -> DatasetBundle:
    """MNIST: 60,000 train and 10,000 test grey 28x28 digits (``torchvision.datasets.MNIST``)."""
    mnist = import_torchvision().datasets.MNIST
    if download:
        _download("mnist", data_dir, lambda root: mnist(str(root), train=True, download=True))
    root = _require("mnist", data_dir, _mnist_files, "MNIST/raw/<the four idx files>")
    splits = [_read("mnist", root, lambda train=train: mnist(str(root), train=train)) for train in (True, False)]
    sets = [ImageSet(s.data.unsqueeze(1).contiguous(), s.targets.to(torch.int64), f"mnist/{split}")
            for s, split in zip(splits, ("train", "test"))]
    return _bundle("mnist", *sets, num_classes=10)


def load_svhn(data_dir: Path | None, download: bool) -> DatasetBundle:
    """SVHN cropped digits: 73,257 train and 26,032 test RGB 32x32 (``torchvision.datasets.SVHN``, label 10 -> 0)."""
    svhn = import_torchvision().datasets.SVHN
    split_names = ("train", "test")
    if download:
        for split in split_names:
            _download("svhn", data_dir, lambda root, split=split: svhn(str(root / "svhn"), split=split, download=True))
    root = _require("svhn", data_dir, lambda r: [r / "svhn" / svhn.split_list[s][1] for s in split_names],
                    "svhn/{train,test}_32x32.mat")
    sets = []
    for split in split_names:
        data = _read("svhn", root, lambda split=split: svhn(str(root / "svhn"), split=split))
        images = torch.from_numpy(np.ascontiguousarray(data.data))
        sets.append(ImageSet(images, torch.from_numpy(data.labels.astype(np.int64)), f"svhn/{split}"))
    return _bundle("svhn", *sets, num_classes=10)


def _cifar(name: str, data_dir: Path | None, download: bool, hundred: bool) -> DatasetBundle:
    datasets = import_torchvision().datasets
    cifar = datasets.CIFAR100 if hundred else datasets.CIFAR10
    if download:
        _download(name, data_dir, lambda root: cifar(str(root), train=True, download=True))

    def files(root: Path) -> list[Path]:
        names = [entry[0] for entry in cifar.train_list + cifar.test_list] + [cifar.meta["filename"]]
        return [root / cifar.base_folder / filename for filename in names]

    root = _require(name, data_dir, files, f"{cifar.base_folder}/<the Python pickles>")
    sets = []
    for split, train in (("train", True), ("test", False)):
        data = _read(name, root, lambda train=train: cifar(str(root), train=train))
        images = torch.from_numpy(np.ascontiguousarray(data.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(data.targets, dtype=torch.int64)
        contexts = _coarse_labels(root / cifar.base_folder, cifar.train_list if train else cifar.test_list) \
            if hundred else None
        sets.append(ImageSet(images, labels, f"{name}/{split}", contexts))
    return _bundle(name, *sets, num_classes=100 if hundred else 10)


def _coarse_labels(folder: Path, file_list: list[list[str]]) -> Tensor:
    """CIFAR-100 superclass ids (0..19) from the ``coarse_labels`` entries of the split's pickles, in order."""
    coarse: list[int] = []
    for filename, _ in file_list:
        with open(folder / filename, "rb") as handle:
            coarse.extend(pickle.load(handle, encoding="latin1")["coarse_labels"])
    return torch.tensor(coarse, dtype=torch.int64)


def load_cifar10(data_dir: Path | None, download: bool) -> DatasetBundle:
    """CIFAR-10: 50,000 train and 10,000 test RGB 32x32 images, 10 classes (``torchvision.datasets.CIFAR10``)."""
    return _cifar("cifar10", data_dir, download, hundred=False)


def load_cifar100(data_dir: Path | None, download: bool) -> DatasetBundle:
    """CIFAR-100: 50,000 train and 10,000 test RGB 32x32, 100 classes; contexts = 20 superclasses."""
    return _cifar("cifar100", data_dir, download, hundred=True)


def _daynight_files(root: Path) -> list[Path]:
    return [root / "daynight" / split / time for split in ("train", "test") for time in DAYNIGHT_CONTEXTS]


def load_daynight(data_dir: Path | None, download: bool) -> DatasetBundle:
    """Day and night image folders (``torchvision.datasets.ImageFolder``), contexts 0 = day, 1 = night.

    ``download`` is accepted for a uniform signature; there is nothing to download.
    """
    root = _require("daynight", data_dir, _daynight_files, "daynight/{train,test}/{day,night}/<class>/<image>")
    tv = import_torchvision()
    sets, classes = [], None
    for split in ("train", "test"):
        images, labels, contexts = [], [], []
        for time, context in DAYNIGHT_CONTEXTS.items():
            folder = tv.datasets.ImageFolder(str(root / "daynight" / split / time))
            if classes is None:
                classes = folder.classes
            if folder.classes != classes:
                raise ValueError(f"daynight: class folders of {folder.root} are {folder.classes}, "
                                 f"but the first folder read has {classes}; day and night need the same classes")
            for path, label in folder.samples:
                images.append(torch.from_numpy(np.array(folder.loader(path), dtype=np.uint8)).permute(2, 0, 1))
                _check_size(path, images[-1], images[0])
                labels.append(label)
                contexts.append(context)
        sets.append(ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.int64), f"daynight/{split}",
                             torch.tensor(contexts, dtype=torch.int64)))
    if sets[0].images.shape[1:] != sets[1].images.shape[1:]:
        raise ValueError(f"daynight: train images are {tuple(sets[0].images.shape[1:])} but test images are "
                         f"{tuple(sets[1].images.shape[1:])}; both splits need one square size")
    return _bundle("daynight", *sets, num_classes=len(classes))


def _check_size(path: str, image: Tensor, first: Tensor) -> None:
    height, width = image.shape[1:]
    if height != width or image.shape != first.shape:
        raise ValueError(f"daynight: {path} is {height}x{width}, expected every image to be "
                         f"{first.shape[1]}x{first.shape[2]} and square; resize the folders to one square size")
