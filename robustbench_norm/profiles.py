"""Scenario settings per profile: the one place a scenario reads its data set, net, schedule and grid from.

``quick`` (the default) runs on embedded data with small nets on a 2-core CPU in minutes; ``paper`` uses the
real data sets from ``--data-dir`` with the papers' nets and schedules (GPU-sized). Hyper-parameter
defaults live in :mod:`robustbench_norm.training.hparams`; a profile only overrides what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from robustbench_norm.training.hparams import AdaMatchConfig, TrainConfig

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
    arch: str
    train: TrainConfig
    severities: dict[str, tuple[float, ...]]
    localnorm_groups: int
    eval_batch_size: int


@dataclass(frozen=True)
class BatchSizeSettings:
    """Train at each batch size (learning rate scaled linearly from ``train.batch_size``); report clean accuracy."""

    data: DataSpec
    arch: str
    train: TrainConfig
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class DomainShiftSettings:
    """AdaMatch from ``source`` to ``target``; supervised training on the source alone gives the floor."""

    source: DataSpec
    target: DataSpec
    arch: str
    adamatch: AdaMatchConfig
    source_only: TrainConfig


@dataclass(frozen=True)
class MixtureSettings:
    """Data sets (or renderings) trained together as one, with contexts (blend, day/night, superclass).

    ``context_from="part"``: a sample's context id is the index of its part; ``"dataset"``: the data set's own
    ids (CIFAR-100 superclasses, day/night folders). ``shared_labels``: the parts share one label space
    (a day set and its night rendering); otherwise part i's labels are offset past part i-1's classes.
    """

    parts: tuple[DataSpec, ...]
    arch: str
    train: TrainConfig
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
    token_arch: str = "vit_tiny"  # the net of norms placed on ViT patch tokens (contextnorm_patches)
    # ViTs do not train with the conv nets' SGD schedule (quick profile: loss stays at ln 10); they get Adam
    token_optimizer: dict[str, Any] = field(
        default_factory=lambda: {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0})
    notes: dict[str, str] = field(default_factory=dict)


_DIGITS = DataSpec("digits")
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
    noise=NoiseSettings(
        data=_DIGITS,
        arch="quick_cnn",
        train=TrainConfig(epochs=8, batch_size=32, lr=0.05),
        severities=_QUICK_SEVERITIES,
        localnorm_groups=4,
        eval_batch_size=32,
    ),
    batch_size=BatchSizeSettings(
        data=DataSpec("digits", train_size=640),
        arch="quick_cnn",
        train=TrainConfig(epochs=5, batch_size=64, lr=0.05),
        batch_sizes=(64, 16, 4, 2),
    ),
    domain_shift=DomainShiftSettings(
        source=DataSpec("digits", image_size=28, channels=3),
        target=DataSpec("street_digits", train_size=1500, test_size=500, image_size=28),
        arch="quick_cnn",
        # ~180 steps: the reference's 0.999 EMAs would still hold most of their initial values
        adamatch=AdaMatchConfig(epochs=4, source_batch_size=32, ema_momentum=0.99,
                                source_distribution_momentum=0.99),
        source_only=TrainConfig(epochs=4, batch_size=32, lr=0.03, weight_decay=1e-3),
    ),
    blend=MixtureSettings(
        parts=(
            DataSpec("digits", train_size=1000, image_size=28, channels=3),
            DataSpec("shapes", train_size=1000, test_size=360, image_size=28),
        ),
        arch="quick_cnn",
        train=TrainConfig(epochs=6, batch_size=32, lr=0.05),
    ),
    day_night=MixtureSettings(
        parts=(
            DataSpec("street_digits", train_size=1000, test_size=400, image_size=28),
            DataSpec("street_digits_night", train_size=1000, test_size=400, image_size=28),
        ),
        arch="quick_cnn",
        train=TrainConfig(epochs=6, batch_size=32, lr=0.05),
        shared_labels=True,
    ),
    notes={
        "batch_size": "quick profile trains at 64, 16, 4 and 2 (the paper sweep adds 32 and 8)",
        "superclass": "real CIFAR-100 only: paper profile",
    },
)

PAPER = Profile(
    name="paper",
    noise=NoiseSettings(
        data=DataSpec("mnist"),
        arch="localnorm_mnist",
        train=TrainConfig(epochs=20, batch_size=100, lr=0.05),
        severities=_PAPER_SEVERITIES,
        localnorm_groups=10,
        eval_batch_size=100,
    ),
    batch_size=BatchSizeSettings(
        data=DataSpec("cifar10"),
        arch="resnet20",
        train=TrainConfig(epochs=100, batch_size=64, lr=0.05),
        batch_sizes=(64, 32, 16, 8, 4, 2),
    ),
    domain_shift=DomainShiftSettings(
        source=DataSpec("mnist", image_size=32, channels=3),
        target=DataSpec("svhn"),
        arch="wrn28_2",
        adamatch=AdaMatchConfig(epochs=10, source_batch_size=64),
        source_only=TrainConfig(epochs=10, batch_size=64, lr=0.03, weight_decay=1e-3),
    ),
    blend=MixtureSettings(
        parts=(DataSpec("cifar100"), DataSpec("mnist", image_size=32, channels=3)),
        arch="cifar_convnet",
        train=TrainConfig(epochs=100, batch_size=256, lr=0.001, optimizer="adam", weight_decay=1e-4),
    ),
    day_night=MixtureSettings(
        parts=(DataSpec("daynight"),),
        arch="resnet20",
        train=TrainConfig(epochs=100, batch_size=128, lr=0.05),
        context_from="dataset",
        shared_labels=True,
    ),
    superclass=MixtureSettings(
        parts=(DataSpec("cifar100"),),
        arch="cifar_convnet",
        train=TrainConfig(epochs=100, batch_size=256, lr=0.001, optimizer="adam", weight_decay=1e-4),
        context_from="dataset",
        shared_labels=True,
    ),
)

_BY_NAME = {"quick": QUICK, "paper": PAPER}


def get_profile(name: str, *, epochs: int | None = None) -> Profile:
    """The named profile; ``epochs`` (for smoke runs) overrides every schedule's epoch count."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {PROFILES}")
    profile = _BY_NAME[name]
    return profile if epochs is None else _with_epochs(profile, epochs)


def _with_epochs(profile: Profile, epochs: int) -> Profile:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")

    def retime(settings: Any) -> Any:
        if settings is None:
            return None
        if isinstance(settings, DomainShiftSettings):
            return replace(settings, adamatch=replace(settings.adamatch, epochs=epochs),
                           source_only=replace(settings.source_only, epochs=epochs))
        return replace(settings, train=replace(settings.train, epochs=epochs))

    return replace(
        profile,
        noise=retime(profile.noise),
        batch_size=retime(profile.batch_size),
        domain_shift=retime(profile.domain_shift),
        blend=retime(profile.blend),
        day_night=retime(profile.day_night),
        superclass=retime(profile.superclass),
    )
