"""Labelled image containers: ``ImageSet`` (one split) and ``DatasetBundle`` (a data set's train and test splits).

Images are stored as uint8 tensors (N, C, H, W) in [0, 255], the form every source (embedded generators, torchvision
data sets, image folders) can produce exactly; ``ImageSet.as_float`` gives the float32 [0, 1] pixel space that the
corruptions and models use. ``stratified_subset`` draws a seeded subset whose class proportions follow the full set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """One split of a labelled image data set.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), class ids 0..num_classes-1.
        name: human-readable name, by convention ``"<dataset>/<split>"``.
        contexts: optional int64 tensor (N,) of context ids (e.g. CIFAR-100 superclass, day = 0 / night = 1).
    """

    images: Tensor
    labels: Tensor
    name: str
    contexts: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet {self.name!r}: images must be a uint8 tensor (N, C, H, W), "
                f"got dtype {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        count = self.images.shape[0]
        for field, tensor in (("labels", self.labels), ("contexts", self.contexts)):
            if tensor is None:
                continue
            if tensor.dtype != torch.int64 or tuple(tensor.shape) != (count,):
                raise ValueError(
                    f"ImageSet {self.name!r}: {field} must be an int64 tensor of shape ({count},), "
                    f"got dtype {tensor.dtype} with shape {tuple(tensor.shape)}"
                )

    def __len__(self) -> int:
        return self.images.shape[0]

    def as_float(self) -> Tensor:
        """Images as float32 (N, C, H, W) in [0, 1] (value / 255)."""
        return self.images.to(torch.float32).div_(255.0)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageSet:
        """The examples at ``indices`` (in that order), with their labels and contexts."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        contexts = None if self.contexts is None else self.contexts[index]
        return ImageSet(self.images[index], self.labels[index], self.name, contexts)


@dataclass(frozen=True)
class DatasetBundle:
    """A data set's train and test splits and the facts a model needs about them.

    Attributes:
        name: the name it was loaded under (see ``list_datasets``).
        train, test: the two splits; their images are (N, channels, image_size, image_size).
        num_classes: number of classes (labels are 0..num_classes-1).
        channels: 1 (grey) or 3 (RGB).
        image_size: side of the square images in pixels.
    """

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    channels: int
    image_size: int

    def __post_init__(self) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        for split in (self.train, self.test):
            if tuple(split.images.shape[1:]) != expected:
                raise ValueError(
                    f"DatasetBundle {self.name!r}: split {split.name!r} has images of shape "
                    f"{tuple(split.images.shape[1:])}, expected (channels, image_size, image_size) = {expected}"
                )


def stratified_subset(image_set: ImageSet, size: int, *, seed: int) -> ImageSet:
    """A seeded subset of ``size`` examples whose class counts are proportional to the full set's
    (:func:`stratified_indices`); the result keeps the original order."""
    total = len(image_set)
    if not 1 <= size <= total:
        raise ValueError(f"subset size {size} of {image_set.name!r} is out of range: valid sizes are 1..{total}")
    if size == total:
        return image_set
    return image_set.subset(stratified_indices(image_set.labels, size, seed=seed))


def stratified_indices(labels: Tensor, size: int, *, seed: int) -> Tensor:
    """Sorted indices of ``size`` of the examples, class counts proportional to ``labels``' counts.

    Each class k with n_k of the N examples gets floor(size * n_k / N) places; the places left over go to the
    classes with the largest remainders (ties: lower class id first). Within a class the examples are drawn
    without replacement by a ``torch.Generator`` seeded with ``seed``.
    """
    total = len(labels)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.to(torch.float64) * size / total
    quota = exact.floor().to(torch.int64)
    leftover = size - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda k: (-(exact[k] - quota[k]).item(), k))
    for k in order[:leftover]:
        quota[k] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, take in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def dataset_fingerprint(bundle: DatasetBundle) -> str:
    """SHA-256 (first 16 hex digits) of a bundle's pixels, labels and contexts, both splits.

    The embedded sets are generated by code that depends on installed packages (matplotlib's fonts, Pillow's
    resampling, scikit-learn's digits); the fingerprint enters every checkpoint key and result recipe, so
    another machine that generates other pixels can never reuse this machine's checkpoints or baselines.
    """
    digest = hashlib.sha256()
    for split in (bundle.train, bundle.test):
        for tensor in (split.images, split.labels, split.contexts):
            if tensor is not None:
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]



def validation_split(image_set: ImageSet, fraction: float = 0.2, *, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A stratified (train, validation) split of ``image_set``: ``fraction`` of it held out for validation.

    Recipes are chosen and convergence is checked on the validation part, never on a test set.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    held_out = stratified_indices(image_set.labels, max(1, round(fraction * len(image_set))), seed=seed)
    kept = torch.ones(len(image_set), dtype=torch.bool)
    kept[held_out] = False
    return image_set.subset(torch.nonzero(kept).flatten()), image_set.subset(held_out)


def fixed_split_bundle(name: str, images: Tensor, labels: Tensor, *, test_count: int,
                       num_classes: int) -> DatasetBundle:
    """A grey data set with a fixed, stratified, seed-independent split: scikit-learn's ``train_test_split``
    with ``test_size=test_count``, ``stratify=labels`` and ``random_state=0`` (the embedded real sets)."""
    from sklearn.model_selection import train_test_split

    train, test = (torch.from_numpy(part.copy()) for part in train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_count, stratify=labels.numpy(), random_state=0))
    return DatasetBundle(name=name, train=ImageSet(images[train], labels[train], f"{name}/train"),
                         test=ImageSet(images[test], labels[test], f"{name}/test"), num_classes=num_classes,
                         channels=images.shape[1], image_size=images.shape[-1])
