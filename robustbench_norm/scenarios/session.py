"""What every scenario shares: a :class:`Session` (data, device, seeds, checkpoint cache), :class:`TrainJob`
(one model to train, named by its cache key) and :class:`Outcome` (the rows and images a scenario produced).

Data path: a scenario module ``plan``s its :class:`TrainJob` objects (no training), ``run`` trains or loads
each through the session's cache and scores it with :func:`robustbench_norm.scenarios.scoring.score`, and
returns an :class:`Outcome`; :func:`record` writes the outcome into a results folder. Nothing here knows
about pytest: the suite in ``suites/`` and the sweep command are thin layers over these functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustbench_norm.atomic import atomic_write
from robustbench_norm.data import DatasetBundle, ImageSet, load_dataset
from robustbench_norm.evaluation import save_reliability_diagram
from robustbench_norm.data.imageset import dataset_fingerprint, validation_split
from robustbench_norm.models import build_model
from robustbench_norm.norms import check_kwargs, get_norm
from robustbench_norm.profiles import DataSpec, Profile, get_profile
from robustbench_norm.results.rows import UNSPECIFIED
from robustbench_norm.results import ResultRow, ResultStore, collect_provenance, confusion_path, save_confusion
from robustbench_norm.training import CheckpointCache, TrainConfig, resolve_device, seed_everything, train_supervised
from robustbench_norm.training.cache import RECIPE_VERSION, canonical_json
from robustbench_norm.training.recipes import Recipe, recipe, with_epochs

ConfusionKey = tuple[str, str, str, str, float]  # (norm, variant, eval_mode, corruption, severity)


@dataclass(frozen=True)
class TrainJob:
    """One model to train: the cache spec that names it, and how to build and train it.

    ``spec`` is JSON-able and holds everything that fixes the weights (scenario, norm, kwargs, data and its
    fingerprint, recipe, seed, device type); the checkpoint cache keys on it. ``recipe_id`` is the short hash
    of the spec without seed and device: the ``recipe`` column of every row the model produces.
    """

    scenario: str
    norm: str
    seed: int
    spec: dict[str, Any]
    build: Callable[[], nn.Module]
    train: Callable[[nn.Module], Any]

    @property
    def recipe_id(self) -> str:
        """The ``recipe`` of the rows; ``"unspecified"`` for a model this suite did not train (empty spec)."""
        return recipe_id(self.spec) if self.spec else UNSPECIFIED


def recipe_id(spec: dict[str, Any]) -> str:
    """``v<RECIPE_VERSION>-<12 hex digits>``: hash of a cache spec without its seed and device."""
    rest = {k: v for k, v in spec.items() if k not in ("seed", "device")}
    digest = hashlib.sha256(canonical_json(rest).encode()).hexdigest()[:12]
    return f"v{RECIPE_VERSION}-{digest}"


@dataclass
class Outcome:
    """What a scenario run produced: result rows, confusion matrices (summed over seeds), images to save."""

    rows: list[ResultRow] = field(default_factory=list)
    confusions: dict[ConfusionKey, np.ndarray] = field(default_factory=dict)
    class_names: dict[ConfusionKey, list[str]] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # file name -> (3, H, W) float grid
    diagrams: dict[str, tuple[torch.Tensor, torch.Tensor, str]] = field(default_factory=dict)  # -> logits, labels, title
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # per-epoch training diagnostics

    def add_confusion(self, key: ConfusionKey, matrix: np.ndarray, class_names: list[str] | None = None) -> None:
        self.confusions[key] = self.confusions.get(key, np.zeros_like(matrix)) + matrix
        if class_names is not None:
            self.class_names[key] = class_names

    def extend(self, other: "Outcome") -> None:
        self.rows += other.rows
        for key, matrix in other.confusions.items():
            self.add_confusion(key, matrix, other.class_names.get(key))
        self.images.update(other.images)
        self.diagrams.update(other.diagrams)
        self.diagnostics += other.diagnostics


@dataclass
class Session:
    """The services a scenario uses: profile, device, seeds, data (memoised), checkpoint cache, models.

    Args:
        profile: ``quick`` or ``paper`` settings (``robustbench_norm.profiles``).
        device: where to train and evaluate.
        seeds: training seeds.
        cache: checkpoint cache.
        user_kwargs: ``--norm-kwargs``, applied over a scenario's kwargs for every norm.
        epochs: override of every schedule's epochs (smoke runs; rows then carry another recipe id).
        data_dir, download: where the real data sets are (paper profile).
        progress: show training progress bars.
        validation: every data set's test split is replaced by a validation split carved from its training
            split (20 %, stratified), which is then trained on without it: for choosing recipes and
            checking convergence, never touching a test set.
        transform: applied to every recipe after the epoch override (the convergence check's longer
            schedule, a candidate recipe of ``robustbench-norm select-recipe``); rows then carry its recipe id.
    """

    profile: Profile
    device: torch.device
    seeds: tuple[int, ...] = (0, 1, 2)
    cache: CheckpointCache = field(default_factory=CheckpointCache)
    user_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    data_dir: Path | None = None
    download: bool = False
    progress: bool = False
    validation: bool = False
    transform: Callable[[Recipe], Recipe] | None = None
    _data: dict[DataSpec, DatasetBundle] = field(default_factory=dict, repr=False)
    _models: dict[str, tuple[nn.Module, str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, profile: str = "quick", *, device: str = "auto", seeds: int = 3,
               cache_dir: str | Path | None = None, norm_kwargs: dict[str, Any] | None = None,
               epochs: int | None = None, data_dir: str | Path | None = None, download: bool = False,
               progress: bool = False) -> "Session":
        """A session from plain option values (every value checked here, before any work)."""
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        return cls(
            profile=get_profile(profile),
            device=resolve_device(device),
            seeds=tuple(range(seeds)),
            cache=CheckpointCache(Path(cache_dir) if cache_dir else None),
            user_kwargs=dict(norm_kwargs or {}),
            epochs=epochs,
            data_dir=Path(data_dir) if data_dir else None,
            download=download,
            progress=progress,
        )

    # -- recipes, data, models ---------------------------------------------------------------------

    def recipe(self, scenario: str, norm: str) -> Recipe:
        """The recipe of ``norm`` in ``scenario``, with this session's epoch override."""
        chosen = recipe(self.profile.name, scenario, norm)
        if self.epochs is not None:
            chosen = with_epochs(chosen, self.epochs)
        return chosen if self.transform is None else self.transform(chosen)

    def norm_kwargs(self, chosen: Recipe, norm: str, num_contexts: int) -> dict[str, Any]:
        """The kwargs ``norm`` is built with: the recipe's, the contexts of a context layer, ``--norm-kwargs``."""
        kwargs = dict(chosen.norm_kwargs)
        if get_norm(norm).needs_context:
            kwargs["num_contexts"] = num_contexts
        kwargs.update(self.user_kwargs)
        check_kwargs(norm, kwargs)
        return kwargs

    def dataset(self, spec: DataSpec) -> DatasetBundle:
        if spec not in self._data:
            bundle = load_dataset(spec.name, data_dir=self.data_dir, download=self.download, **spec.load_kwargs())
            if self.validation:
                train, held_out = validation_split(bundle.train)
                bundle = replace(bundle, train=train, test=replace(held_out, name=f"{bundle.name}/validation"))
            self._data[spec] = bundle
        return self._data[spec]

    def data_identity(self, spec: DataSpec) -> dict[str, Any]:
        """A data set's part of a cache spec: its settings and the fingerprint of the loaded pixels."""
        return {**asdict(spec), "fingerprint": dataset_fingerprint(self.dataset(spec))}

    def build(self, chosen: Recipe, norm: str, kwargs: dict[str, Any], *, num_classes: int, channels: int,
              image_size: int, placement: str | None = None) -> nn.Module:
        """``chosen``'s net with ``norm`` (at ``placement``, default its own), behind an input standardisation
        layer when the recipe standardises (the trainer fits it)."""
        return build_model(chosen.arch, num_classes=num_classes, in_channels=channels, image_size=image_size,
                           norm=norm, norm_kwargs=kwargs, placement=placement, standardize=chosen.train.standardize)

    def train_supervised(self, model: nn.Module, data: ImageSet, config: TrainConfig, seed: int,
                         contexts: torch.Tensor) -> list[dict[str, Any]]:
        return train_supervised(model, data, config, device=self.device, seed=seed, contexts=contexts,
                                progress=self.progress)

    def supervised_jobs(self, scenario: str, norm: str, chosen: Recipe, kwargs: dict[str, Any], train_set: ImageSet,
                        contexts: torch.Tensor, *, num_classes: int, channels: int, image_size: int,
                        placement: str | None = None, **data: Any) -> list[TrainJob]:
        """One supervised :class:`TrainJob` per seed: ``chosen``'s net and schedule on ``train_set``, the norm
        at ``placement`` (default: its own; a given placement enters the cache spec); ``data`` (the data sets'
        identities) completes the cache spec."""
        placed = {} if placement is None else {"placement": placement}
        return [
            TrainJob(
                scenario, norm, seed,
                spec=self.spec(scenario, norm, seed, norm_kwargs=kwargs, **placed, **data, **chosen.schedule_dict()),
                build=lambda: self.build(chosen, norm, kwargs, num_classes=num_classes, channels=channels,
                                         image_size=image_size, placement=placement),
                train=lambda model, seed=seed: self.train_supervised(model, train_set, chosen.train, seed, contexts),
            )
            for seed in self.seeds
        ]

    def model(self, job: TrainJob) -> tuple[nn.Module, str]:
        """``job``'s model, trained once and cached on disk, memoised in this process; and its cache key.

        The model is built right after seeding with the job's seed, so its initial weights depend on the
        seed alone, never on what ran before in the process.
        """
        memo = canonical_json(job.spec)
        if memo not in self._models:
            seed_everything(job.seed)
            result = self.cache.train_or_load(job.spec, job.build(), job.train)
            self._models[memo] = (result.model.to(self.device).eval(), result.key, result.history)
        model, key, _ = self._models[memo]
        return model, key

    def history(self, job: TrainJob) -> Any:
        """The training history ``job.train`` returned (stored with the checkpoint); after :meth:`model`."""
        return self._models[canonical_json(job.spec)][2]

    def release(self, norm: str | None = None) -> None:
        """Forget the models held in memory (of ``norm``, or all); they stay in the checkpoint cache."""
        self._models = {k: v for k, v in self._models.items()
                        if norm is not None and json.loads(k).get("norm") != norm}

    def spec(self, scenario: str, norm: str, seed: int, **parts: Any) -> dict[str, Any]:
        """A cache spec: scenario, norm, seed, device type and the scenario's ``parts`` (data, recipe, ...)."""
        return {"scenario": scenario, "profile": self.profile.name, "norm": norm, "seed": seed,
                "device": self.device.type, **parts}

    # -- rows --------------------------------------------------------------------------------------

    def row(self, **fields: Any) -> ResultRow:
        """A result row with this session's profile and provenance filled in."""
        provenance = collect_provenance(self.device)
        return ResultRow(profile=self.profile.name, **provenance.as_fields(), **fields)


def record(outcome: Outcome, store: ResultStore, profile: str, scenario: str) -> None:
    """Write ``outcome`` into ``store``'s folder: rows merged by key, confusion matrices, images."""
    from robustbench_norm._torchvision import import_torchvision

    store.write(outcome.rows)
    for key, matrix in outcome.confusions.items():
        norm, variant, mode, corruption, severity = key
        kwargs = next((r.norm_kwargs for r in outcome.rows if r.norm == norm), "{}")
        stem = confusion_path(store.root, profile, scenario, norm, variant, mode, corruption, severity, kwargs)
        save_confusion(matrix, stem, title=f"{scenario}: {norm} {variant} {mode} {corruption} {severity}",
                       class_names=outcome.class_names.get(key))
    for name, grid in outcome.images.items():
        path = store.root / profile / name
        path.parent.mkdir(parents=True, exist_ok=True)
        import_torchvision().utils.save_image(grid, path)
    for name, (logits, labels, title) in outcome.diagrams.items():
        save_reliability_diagram(logits, labels, store.root / profile / name, title=title)
    for norm, variant in sorted({(entry["norm"], entry.get("variant", "")) for entry in outcome.diagnostics}):
        table = pd.DataFrame([entry for entry in outcome.diagnostics
                              if (entry["norm"], entry.get("variant", "")) == (norm, variant)])
        suffix = f"__{variant}" if variant else ""  # one file per training variant (several run per norm)
        path = store.root / profile / "diagnostics" / f"{scenario}__{norm}{suffix}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: table.to_csv(handle, index=False, lineterminator="\n"))


def single_context(image_set: ImageSet) -> torch.Tensor:
    """Context id 0 for every sample: a one-context scenario gives a context layer exactly one context."""
    return torch.zeros(len(image_set), dtype=torch.long)
