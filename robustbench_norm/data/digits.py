"""Embedded "digits": scikit-learn's real handwritten digits, framed like MNIST.

Source: ``sklearn.datasets.load_digits`` (the UCI optical-recognition digits: 1,797 images of 8x8 ink counts
0..16 from 43 writers, 10 classes, shipped inside scikit-learn, no download). Each image is scaled to 0..255
(value * 255 / 16), upsampled bilinearly to 20x20 and zero-padded by 4 pixels on every side to 28x28, which is
MNIST's framing (a 20x20 digit box centred in a 28x28 field, white ink on black). Grey, one channel.

Split: fixed and stratified, independent of the seed: ``train_test_split`` with ``test_size=360``,
``stratify=labels`` and ``random_state=0`` gives 1,437 train and 360 test images (35 to 37 per class in test).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .imageset import DatasetBundle, ImageSet

NAME = "digits"
IMAGE_SIZE = 28
TEST_COUNT = 360
SPLIT_RANDOM_STATE = 0
_DIGIT_BOX = 20


@lru_cache(maxsize=1)
def _split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(torch.arange(len(labels)).numpy(), test_size=TEST_COUNT, stratify=labels,
                                   random_state=SPLIT_RANDOM_STATE)
    return torch.from_numpy(train.copy()), torch.from_numpy(test.copy())


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    ink = torch.from_numpy(raw.images).to(torch.float32).unsqueeze(1) * (255.0 / 16.0)
    box = F.interpolate(ink, size=(_DIGIT_BOX, _DIGIT_BOX), mode="bilinear", align_corners=False)
    pad = (IMAGE_SIZE - _DIGIT_BOX) // 2
    images = F.pad(box, (pad, pad, pad, pad)).round_().clamp_(0, 255).to(torch.uint8)
    return images, torch.from_numpy(raw.target).to(torch.int64)


def load_digits_bundle() -> DatasetBundle:
    """The full fixed split: train 1,437 and test 360 images, uint8 (N, 1, 28, 28), labels 0..9."""
    images, labels = _all_digits()
    train, test = _split_indices()
    return DatasetBundle(
        name=NAME,
        train=ImageSet(images[train], labels[train], f"{NAME}/train"),
        test=ImageSet(images[test], labels[test], f"{NAME}/test"),
        num_classes=10,
        channels=1,
        image_size=IMAGE_SIZE,
    )
