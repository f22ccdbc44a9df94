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

from .imageset import DatasetBundle, fixed_split_bundle

NAME = "digits"
IMAGE_SIZE = 28
TEST_COUNT = 360
_DIGIT_BOX = 20


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
    return fixed_split_bundle(NAME, images, labels, test_count=TEST_COUNT, num_classes=10)
