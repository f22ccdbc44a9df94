"""What every scenario shares: data, training through the checkpoint cache, result rows and the regression gate.

A scenario file asks :class:`Bench` for its data set, a trained model (trained once per spec and cached on
disk), builds :class:`~robustbench_norm.results.ResultRow` objects with :meth:`Bench.row`, and hands them to
:meth:`Bench.record`, which writes them, their confusion matrices and checks them against the baselines.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import corruptions
from robustbench_norm.data import DatasetBundle, ImageSet, load_dataset
from robustbench_norm.evaluation import predict
from robustbench_norm.models import build_model
from robustbench_norm.norms import get_norm
from robustbench_norm.profiles import DataSpec, MixtureSettings, Profile, get_profile
from robustbench_norm.results import (
    ResultRow,
    ResultStore,
    check_against_baselines,
    collect_provenance,
    confusion_matrix,
    confusion_path,
    prediction_entropy,
    save_confusion,
    update_baselines,
)
from robustbench_norm.training import (
    CheckpointCache,
    TrainConfig,
    resolve_device,
    seed_everything,
    train_supervised,
)


def corruption_ids(names: list[str]) -> list[str]:
    """Short ids (agn, apn, mbn) for test ids."""
    return [corruptions.get_corruption(name).short_name for name in names]


def derived_seed(*parts: object) -> int:
    """A stable seed from a description (the same corrupted images for every norm)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


@dataclass
class Bench:
    """Options of this pytest run and the services scenarios use."""

    profile: Profile
    device: torch.device
    seeds: tuple[int, ...]
    store: ResultStore
    cache: CheckpointCache
    user_kwargs: dict[str, Any]
    data_dir: Path | None
    download: bool
    update: bool
    progress: bool
    _data: dict[DataSpec, DatasetBundle] = field(default_factory=dict)
    _models: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)

    @staticmethod
    def results_dir_of(config: pytest.Config) -> Path:
        option = config.getoption("results_dir")
        return Path(option) if option else config.rootpath / "leaderboards"

    @classmethod
    def from_config(cls, config: pytest.Config, user_kwargs: dict[str, Any]) -> "Bench":
        data_dir = config.getoption("data_dir")
        cache_dir = config.getoption("cache_dir")
        return cls(
            profile=get_profile(config.getoption("profile"), epochs=config.getoption("epochs")),
            device=resolve_device(config.getoption("device")),
            seeds=tuple(range(config.getoption("seeds"))),
            store=ResultStore(cls.results_dir_of(config)),
            cache=CheckpointCache(Path(cache_dir) if cache_dir else None),
            user_kwargs=user_kwargs,
            data_dir=Path(data_dir) if data_dir else None,
            download=config.getoption("download"),
            update=config.getoption("update_baselines"),
            progress=config.getoption("capture") == "no",
        )

    # -- data and models ---------------------------------------------------------------------------

    def dataset(self, spec: DataSpec) -> DatasetBundle:
        if spec not in self._data:
            self._data[spec] = load_dataset(
                spec.name, data_dir=self.data_dir, download=self.download, **spec.load_kwargs()
            )
        return self._data[spec]

    def norm_kwargs(self, scenario_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The kwargs a norm is built with: the scenario's defaults for it, overridden by --norm-kwargs."""
        return {**(scenario_defaults or {}), **self.user_kwargs}

    @staticmethod
    def single_context(bundle: DatasetBundle) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ids for a one-context scenario (all zeros), for train and test."""
        return (torch.zeros(len(bundle.train), dtype=torch.long), torch.zeros(len(bundle.test), dtype=torch.long))

    def schedule(self, config: TrainConfig, norm: str) -> TrainConfig:
        """The supervised schedule for ``norm``: a norm placed on ViT tokens trains with the profile's ViT optimiser."""
        if get_norm(norm).placement == "tokens":
            return replace(config, **self.profile.token_optimizer)
        return config

    def build(self, arch: str, bundle: DatasetBundle | "JointData", norm: str, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
        """The scenario's net with ``norm``; a norm placed on patch tokens runs on the profile's ViT."""
        if get_norm(norm).placement == "tokens":
            arch = self.profile.token_arch
        return build_model(
            arch,
            num_classes=num_classes,
            in_channels=bundle.channels,
            image_size=bundle.image_size,
            norm=norm,
            norm_kwargs=kwargs,
        )

    def trained(self, spec: dict[str, Any], build: Callable[[], nn.Module],
                train: Callable[[nn.Module], Any]) -> tuple[nn.Module, str]:
        """Train ``build()`` with ``train`` unless the cache holds the weights for ``spec``; memoised in-process.

        The model is built right after seeding with ``spec["seed"]``, so its initial weights depend on the seed
        alone, never on what ran before in the process (test order, -k selections, xdist placement).
        """
        spec = {**spec, "device": self.device.type}
        memo = repr(sorted(spec.items()))
        if memo not in self._models:
            seed_everything(spec["seed"])
            result = self.cache.train_or_load(spec, build(), train)
            self._models[memo] = (result.model.to(self.device).eval(), result.key)
        return self._models[memo]

    def train_supervised(self, model: nn.Module, data: ImageSet, config: Any, seed: int,
                         contexts: torch.Tensor | None = None) -> Any:
        return train_supervised(
            model, data, config, device=self.device, seed=seed, contexts=contexts, progress=self.progress
        )

    # -- rows, confusion matrices, gate ------------------------------------------------------------

    def row(self, **fields: Any) -> ResultRow:
        """A result row with this run's profile and provenance filled in."""
        provenance = collect_provenance(self.device)
        return ResultRow(profile=self.profile.name, **provenance.as_fields(), **fields)

    def record(self, scenario: str, rows: list[ResultRow],
               confusions: dict[tuple[str, ...], np.ndarray] | None = None) -> None:
        """Write rows (merged by key) and confusion matrices, then gate the rows on the baselines."""
        self.store.write(rows)
        for (norm, variant, eval_mode, corruption, severity), matrix in (confusions or {}).items():
            stem = confusion_path(self.store.root, self.profile.name, scenario, norm, variant, eval_mode,
                                  corruption, severity)
            save_confusion(matrix, stem, title=f"{scenario}: {norm} {variant} {eval_mode} {corruption} {severity}")
        self._gate(scenario, rows)

    def _gate(self, scenario: str, rows: list[ResultRow]) -> None:
        path = self.store.root / self.profile.name / "baselines" / f"{scenario}.csv"
        frame = ResultStore.frame(rows)
        if self.update:
            update_baselines(frame, path)
            return
        regressions = check_against_baselines(frame, path)
        if regressions:
            pytest.fail("below committed baseline:\n" + "\n".join(r.message for r in regressions), pytrace=False)


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def spec_dict(**parts: Any) -> dict[str, Any]:
    """JSON-able cache spec (dataclasses flattened)."""
    return {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in parts.items()}


@dataclass(frozen=True)
class JointData:
    """Parts of a mixture scenario joined into one labelled set with context ids."""

    train: ImageSet
    test: ImageSet
    num_classes: int
    channels: int
    image_size: int
    context_names: tuple[str, ...]


def join_parts(bench: Bench, settings: MixtureSettings) -> JointData:
    """Concatenate the parts; context = part index or the data set's own ids; labels offset unless shared."""
    bundles = [bench.dataset(part) for part in settings.parts]
    offsets = [0] * len(bundles) if settings.shared_labels else list(np.cumsum([0] + [b.num_classes for b in bundles[:-1]]))
    num_classes = max(b.num_classes for b in bundles) if settings.shared_labels else sum(b.num_classes for b in bundles)

    def joined(split: str) -> ImageSet:
        sets = [getattr(b, split) for b in bundles]
        if settings.context_from == "part":
            contexts = [torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(sets)]
        else:
            contexts = [s.contexts for s in sets]
        return ImageSet(
            images=torch.cat([s.images for s in sets]),
            labels=torch.cat([s.labels + int(o) for s, o in zip(sets, offsets)]),
            name="+".join(b.name for b in bundles),
            contexts=torch.cat(contexts),
        )

    train, test = joined("train"), joined("test")
    if settings.context_from == "part":
        names = tuple(b.name for b in bundles)
    else:
        names = tuple(f"{bundles[0].name}:context{c}" for c in range(int(train.contexts.max()) + 1))
    first = bundles[0]
    return JointData(train, test, num_classes, first.channels, first.image_size, names)


def run_mixture(bench: Bench, scenario: str, settings: MixtureSettings, norm: str) -> dict[int, nn.Module]:
    """Train on the joined parts (contexts to context layers), evaluate each context part and all together.

    Rows: ``accuracy`` and ``prediction_entropy`` with ``dataset`` = the part's name or the joint name;
    a collapse (one class predicted for everything) is a row with its numbers, never an error.
    """
    joint = join_parts(bench, settings)
    spec = get_norm(norm)
    config = bench.schedule(settings.train, norm)
    kwargs = bench.norm_kwargs({"num_contexts": len(joint.context_names)} if spec.needs_context else {})
    images, labels, contexts = joint.test.as_float(), joint.test.labels, joint.test.contexts
    rows, confusions, models = [], {}, {}
    for seed in bench.seeds:
        cache_spec = spec_dict(scenario=scenario, arch=settings.arch, norm=norm, norm_kwargs=kwargs,
                               parts=[asdict(p) for p in settings.parts], train=config, seed=seed,
                               context_from=settings.context_from, shared_labels=settings.shared_labels)
        model, checkpoint = bench.trained(
            cache_spec,
            build=lambda: bench.build(settings.arch, joint, norm, kwargs, joint.num_classes),
            train=lambda m: bench.train_supervised(m, joint.train, config, seed, joint.train.contexts),
        )
        models[seed] = model
        for mode in spec.eval_modes:
            predictions, seconds = timed(lambda: predict(
                model, images, mode=mode, batch_size=settings.train.batch_size, device=bench.device,
                contexts=contexts))
            parts = [(joint.train.name, torch.ones_like(labels, dtype=torch.bool))]
            parts += [(name, contexts == c) for c, name in enumerate(joint.context_names)]
            for dataset, mask in parts:
                common = dict(scenario=scenario, dataset=dataset, model=settings.arch, norm=norm,
                              norm_kwargs=kwargs, variant="joint", eval_mode=mode, corruption="none",
                              severity=0.0, train_batch_size=settings.train.batch_size, seed=seed,
                              n_examples=int(mask.sum()), checkpoint_hash=checkpoint, wall_seconds=seconds)
                hits = (predictions[mask] == labels[mask]).float().mean()
                entropy = prediction_entropy(predictions[mask].numpy(), joint.num_classes)
                rows += [bench.row(metric="accuracy", value=float(hits), **common),
                         bench.row(metric="prediction_entropy", value=entropy, **common)]
            key = (norm, "joint", mode, "none", 0.0)
            matrix = confusion_matrix(predictions.numpy(), labels.numpy(), joint.num_classes)
            confusions[key] = confusions.get(key, np.zeros_like(matrix)) + matrix
    bench.record(scenario, rows, confusions)
    return models
