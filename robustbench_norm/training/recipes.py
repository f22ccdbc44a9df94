"""Which training recipe for (profile, scenario, norm): the one function that answers it (DomainBed's
``hparams_registry`` convention). No other module picks an architecture, an optimiser or a norm's kwargs
by name.

A scenario has **one shared recipe** meant to converge every norm family (checked by ``robustbench-norm
check-convergence``: twice the steps moves the mean validation accuracy over 3 seeds by at most 1 point;
what has been measured, and what is not yet converged, is in ``docs/convergence-quick.md``). A family gets
its own recipe only where the shared one does not train it, compared on a validation split carved from the
training set, never the test set, by ``robustbench-norm select-recipe``. Today there are these:

* norms placed on ViT patch tokens (``placement="tokens"``, Context Norm's CN-Patches) run on ``vit_tiny``,
  which the conv nets' SGD schedule trains poorly (blend validation: 36.8 % mean, one seed at chance, against
  Adam's 84.9 %; ``docs/recipe-selection-quick.md``); its supervised training and its AdaMatch runs use Adam
  (lr 1e-3, no weight decay). Under the reference AdaMatch SGD schedule the quick ViT collapsed to chance on
  the source itself (10.1 %); with Adam it keeps the source (96.2 %, one probe on the validation splits).
  Where the scenario's net already is a ViT (the paper profile's ``vit_cn`` for ``blend`` and
  ``superclass``) they keep the shared recipe, so CN-Patches and CN-Channels compare on one net and one
  schedule.
* A norm whose mean validation accuracy still moves by more than the 1-point tolerance when the shared
  schedule is doubled trains longer (:data:`_LONGER`), chosen by the same check at the longer length
  (``docs/convergence-quick.md`` has every pair). Measured (1x -> 2x steps, 3-seed means): blend LocalNorm
  95.4 -> 97.2, LN 93.4 -> 95.9 and, at 40 epochs, +1.61 again (hence 80), LCN 97.0 -> 98.1; day/night
  LocalNorm 95.0 -> 96.3, BN +1.11, LN +1.15; batch-2 InstanceNorm +1.28.
* AdaMatch in the quick domain shift trains 80 epochs for every norm: BN's target validation accuracy moved
  82.5 -> 95.7 from 20 to 40 epochs and 95.7 -> 97.3 from 40 to 80.

Norm kwargs a scenario sets for a norm (LocalNorm's K groups: the paper uses 10 groups of 10 on MNIST; the
quick profile's batch of 32 takes 4 groups of 8) live in :data:`_SCENARIO_NORM_KWARGS`.

Paper-profile recipes follow ``docs/paper-fidelity.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from robustbench_norm.models.factory import TOKEN_ARCHS
from robustbench_norm.norms import get_norm
from robustbench_norm.training.hparams import AdaMatchConfig, TrainConfig

SCENARIOS: tuple[str, ...] = ("noise", "batch_size", "domain_shift", "blend", "day_night", "superclass",
                              "noise_cifar10", "cifar_mixture")
TOKEN_ARCH = "vit_tiny"
_TOKEN_OPTIMIZER = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}


@dataclass(frozen=True)
class Recipe:
    """How one (profile, scenario, norm) model is trained.

    Attributes:
        arch: the net (``robustbench_norm.models.build_model`` name).
        train: supervised schedule (domain shift: the source-only floor).
        adamatch: AdaMatch schedule (domain shift only).
        adamatch_reference: a second AdaMatch schedule run as the variant ``adamatch_reference`` (paper
            profile: the reference implementation's, next to the one the CN paper states).
        norm_kwargs: kwargs this scenario sets for the norm (``--norm-kwargs`` overrides them).
        min_steps: the fewest optimiser steps any batch size of the ``batch_size`` sweep trains (its epochs
            are raised until it takes them; 0 = the recipe's epochs at every batch size).
        source: where the recipe comes from, recorded with the results ("shared" or the family's reason).
    """

    arch: str
    train: TrainConfig
    adamatch: AdaMatchConfig | None = None
    adamatch_reference: AdaMatchConfig | None = None
    norm_kwargs: dict[str, Any] = field(default_factory=dict)
    min_steps: int = 0
    source: str = "shared"

    def schedule_dict(self) -> dict[str, Any]:
        """Everything of the recipe that fixes the weights besides the data (part of the cache key)."""
        spec = {"arch": self.arch, "train": self.train.as_dict()}
        if self.adamatch is not None:
            spec["adamatch"] = self.adamatch.as_dict()
        return spec


def _quick() -> dict[str, Recipe]:
    """The quick profile: each schedule chosen on validation splits (``docs/convergence-quick.md``)."""
    return {
        # mnist5k (4,000 training images, 28x28): 2,500 steps
        "noise": Recipe("quick_cnn", TrainConfig(epochs=20, batch_size=32, lr=0.05)),
        # digits at 16x16: batch B trains 10 epochs at lr 0.1 * B / 64 and at least min_steps steps, so
        # batch 64 trains 1,760 steps (80 epochs) and batch 2 7,180 (10 epochs) (scenarios.batch_size)
        "batch_size": Recipe("quick_cnn", TrainConfig(epochs=10, batch_size=64, lr=0.1), min_steps=1760),
        # digits -> mnist5k at 16x16 grey: 3,520 AdaMatch steps (the EMAs decay over ~100 steps, not 1,000)
        "domain_shift": Recipe(
            "quick_cnn",
            TrainConfig(epochs=20, batch_size=32, lr=0.05),
            adamatch=AdaMatchConfig(epochs=80, source_batch_size=32, ema_momentum=0.99,
                                    source_distribution_momentum=0.99),
        ),
        # digits + shapes at 16x16 (1,437 + 8,000 training images): 5,900 steps
        "blend": Recipe("quick_cnn", TrainConfig(epochs=20, batch_size=32, lr=0.05)),
        # shapes + their night rendering at 16x16 (16,000 training images): 10,000 steps
        "day_night": Recipe("quick_cnn", TrainConfig(epochs=20, batch_size=32, lr=0.05)),
    }


def _paper() -> dict[str, Recipe]:
    """The paper profile: every value and its source (paper / authors' code / our guess) is a row of
    ``docs/paper-fidelity.md``."""
    vit = TrainConfig(epochs=500, batch_size=216, lr=1e-3, optimizer="adamw", weight_decay=1e-4 / 1e-3,
                      schedule="constant", augment="flip_crop", standardize=True, validation_fraction=0.1,
                      keep_best=True, patience=10)
    return {
        # LocalNorm section 5.1 / Fig. 7, schedule of the authors' mnist_run.py: Adam, 1e-3 * 0.9^epoch, 50 epochs
        "noise": Recipe("localnorm_mnist", TrainConfig(epochs=50, batch_size=100, lr=1e-3, optimizer="adam",
                                                       weight_decay=0.0, schedule="exponential", lr_decay=0.9,
                                                       validation_fraction=0.1, eval_batch_size=100)),
        # LocalNorm Fig. 8a: VGG19, batch 128; training of the authors' cifar10/vgg_test.py
        "noise_cifar10": Recipe("vgg19", TrainConfig(epochs=250, batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
                                                     weight_decay=1e-3, schedule="step",
                                                     milestones=tuple(range(30, 250, 30)), lr_decay=0.75,
                                                     augment="flip_crop", standardize=True, validation_fraction=0.1,
                                                     eval_batch_size=128)),
        # ILM section 4.1.1 / 4.2; resnet18_cifar stands in for the paper's ResNet-101
        "batch_size": Recipe("resnet18_cifar", TrainConfig(epochs=350, batch_size=64, lr=0.1, momentum=0.9,
                                                           weight_decay=5e-4, schedule="step", milestones=(150, 250),
                                                           lr_decay=0.1, augment="flip_crop", standardize=True)),
        # CN section IV-F: WRN-28-2; AdaMatch with Adam and cosine decay from 0.03 (the authors' notebook:
        # Keras CosineDecay(alpha=0.25), l2(5e-4) kernels, 100 epochs, flips); the reference schedule as a variant
        "domain_shift": Recipe(
            "wrn28_2",
            TrainConfig(epochs=10, batch_size=64, lr=0.03, weight_decay=1e-3),
            adamatch=AdaMatchConfig(epochs=100, source_batch_size=64, optimizer="adam", lr_decay="keras",
                                    weak_flip=True),
            adamatch_reference=AdaMatchConfig(epochs=140, source_batch_size=64, weak_flip=True),
        ),
        # CN sections IV-C / IV-D: the authors' ViT, AdamW lr 1e-3 wd 1e-4 (TF Addons' per-step decay),
        # flips + crops, standardised inputs, early stopping on a 10 % validation split
        "blend": Recipe("vit_cn", vit),
        "superclass": Recipe("vit_cn", vit),
        "day_night": Recipe("resnet20", TrainConfig(epochs=100, batch_size=128, lr=0.05)),
        # CN section IV-B (Tables V/VI): CIFAR ConvNet, batch 256, 100 epochs, RMSprop with momentum 0.9; the
        # scenario sets lr and weight decay from the profile's grid
        "cifar_mixture": Recipe("cifar_convnet", TrainConfig(epochs=100, batch_size=256, lr=0.001, optimizer="rmsprop",
                                                             momentum=0.9, weight_decay=1e-4, schedule="constant",
                                                             augment="flip_crop", standardize=True,
                                                             validation_fraction=0.1, keep_best=True)),
    }


_SHARED: dict[str, dict[str, Recipe]] = {"quick": _quick(), "paper": _paper()}

_SCENARIO_NORM_KWARGS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("quick", "noise", "localnorm"): {"num_groups": 4},
    ("paper", "noise", "localnorm"): {"num_groups": 10},
    ("paper", "noise_cifar10", "localnorm"): {"num_groups": 8},  # LocalNorm 5.1: 8 groups of 16 at batch 128
    ("paper", "batch_size", "groupnorm"): {"num_groups": 32},  # ILM 4.1.1: GN with 32 groups
    ("paper", "batch_size", "ilm_gn"): {"num_groups": 32},
    # LCN section 4.3 (its only classification setting): 32 channels per group, on every net whose widths allow
    **{("paper", scenario, "lcn"): {"channels_per_group": 32}
       for scenario in ("batch_size", "noise_cifar10", "cifar_mixture", "blend", "superclass")},
}


# quick (scenario, norm) -> epochs, where the shared epochs leave the norm unconverged (module docstring)
_LONGER: dict[tuple[str, str], int] = {
    ("blend", "layernorm"): 80, ("blend", "lcn"): 40, ("blend", "localnorm"): 40,
    ("day_night", "batchnorm"): 40, ("day_night", "layernorm"): 40, ("day_night", "localnorm"): 40,
    ("day_night", "batchnorm_test_stats"): 40,  # trains exactly as batchnorm; only its test-time mode differs
    ("batch_size", "instancenorm"): 20,
}
# a family's own supervised schedule in one scenario: (TrainConfig fields it changes, why)
_FAMILY_TRAIN: dict[tuple[str, str, str], tuple[dict[str, Any], str]] = {
    ("quick", scenario, norm): ({"epochs": epochs}, f"{norm}: {epochs} epochs (at half as many its validation "
                                                    "accuracy still moved > 1 point when doubled)")
    for (scenario, norm), epochs in _LONGER.items()
}


def recipe(profile: str, scenario: str, norm: str) -> Recipe:
    """The training recipe of ``norm`` in ``scenario`` of ``profile`` (see the module docstring).

    Raises ``ValueError`` naming the valid profiles, scenarios or norms.
    """
    if profile not in _SHARED:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {tuple(_SHARED)}")
    recipes = _SHARED[profile]
    if scenario not in recipes:
        raise ValueError(f"profile {profile!r} has no scenario {scenario!r}; valid: {tuple(recipes)}")
    spec = get_norm(norm)
    chosen = replace(recipes[scenario],
                     norm_kwargs=dict(_SCENARIO_NORM_KWARGS.get((profile, scenario, spec.name), {})))
    if spec.placement == "tokens" and chosen.arch not in TOKEN_ARCHS:
        adamatch = None if chosen.adamatch is None else replace(chosen.adamatch, **_TOKEN_OPTIMIZER)
        chosen = replace(chosen, arch=TOKEN_ARCH, train=replace(chosen.train, **_TOKEN_OPTIMIZER), adamatch=adamatch,
                         source="tokens: vit_tiny with Adam (the shared SGD schedule leaves a ViT at chance)")
    if (profile, scenario, spec.name) in _FAMILY_TRAIN:
        changes, reason = _FAMILY_TRAIN[profile, scenario, spec.name]
        chosen = replace(chosen, train=replace(chosen.train, **changes), source=reason)
    return chosen


def _shared_schedule(chosen: Recipe, profile: str, scenario: str) -> Recipe:
    """``chosen`` (a family's recipe) with the scenario's shared optimiser and schedule, the family's net kept."""
    return replace(chosen, train=_SHARED[profile][scenario].train, source="shared")


def family_candidates(profile: str, scenario: str, norm: str) -> dict[str, Recipe]:
    """The recipes ``robustbench-norm select-recipe`` compares for ``norm``: the shared one (on the family's
    net) and the family's own; one entry when the norm has no family-specific recipe."""
    chosen = recipe(profile, scenario, norm)
    if chosen.source == "shared":
        return {"shared": chosen}
    return {"shared": _shared_schedule(chosen, profile, scenario), "family": chosen}


def with_epochs(chosen: Recipe, epochs: int) -> Recipe:
    """``chosen`` with every schedule set to ``epochs`` epochs and no step floor (smoke runs; rows then carry
    another recipe)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    adamatch, reference = (None if c is None else replace(c, epochs=epochs)
                           for c in (chosen.adamatch, chosen.adamatch_reference))
    return replace(chosen, train=replace(chosen.train, epochs=epochs), adamatch=adamatch, adamatch_reference=reference,
                   min_steps=0)


def scaled_steps(chosen: Recipe, factor: int) -> Recipe:
    """``chosen`` trained ``factor`` times as many steps (the convergence check's longer schedule)."""
    adamatch, reference = (None if c is None else replace(c, epochs=c.epochs * factor)
                           for c in (chosen.adamatch, chosen.adamatch_reference))
    return replace(chosen, train=replace(chosen.train, epochs=chosen.train.epochs * factor), adamatch=adamatch,
                   adamatch_reference=reference, min_steps=chosen.min_steps * factor)
