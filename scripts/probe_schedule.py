"""Validation accuracy of one (scenario, norm) under a changed schedule or training-set size: the probes behind
a recipe choice (``docs/convergence-quick.md`` lists the ones that chose the quick mixture recipes).

Usage::

    python scripts/probe_schedule.py SCENARIO NORM [--set FIELD=VALUE ...] [--train-size N] [--seeds K]

``--set`` changes a field of the scenario's ``TrainConfig`` (``epochs=80``, ``lr=0.1``, ``optimizer=adam``;
values are parsed as JSON, else kept as text); ``--train-size`` sets the training size of every generated
``shapes`` part of a mixture scenario (the test images do not depend on it). The model trains on the training
split minus the stratified 20 % validation split that ``check-convergence`` uses and is scored on that split in
the norm's first test-time mode, never on a test set. Prints one JSON line: the probe, seconds, accuracy per
seed and their mean (in %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from robustbench_norm.convergence import in_distribution_settings, validation_accuracies
from robustbench_norm.scenarios import Session
from robustbench_norm.training.hparams import TrainConfig


def parse_changes(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=80", "optimizer=adam"]`` -> ``{"epochs": 80, "optimizer": "adam"}``, fields checked."""
    valid = TrainConfig.__dataclass_fields__
    changes = {}
    for pair in pairs:
        field, sep, text = pair.partition("=")
        if not sep or field not in valid:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(valid)}")
        try:
            changes[field] = json.loads(text)
        except json.JSONDecodeError:
            changes[field] = text
    return changes


def probe_session(scenario: str, changes: dict[str, Any], train_size: int | None, seeds: int,
                  cache_dir: str | None) -> Session:
    session = Session.create("quick", device="cpu", seeds=seeds, cache_dir=cache_dir)
    profile = session.profile
    if train_size is not None:
        mixture = getattr(profile, scenario)
        parts = tuple(replace(p, train_size=train_size) if p.name.startswith("shapes") else p for p in mixture.parts)
        profile = replace(profile, **{scenario: replace(mixture, parts=parts)})
    return replace(session, profile=profile, validation=True,
                   transform=lambda chosen: replace(chosen, train=replace(chosen.train, **changes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("norm")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    changes = parse_changes(args.set)
    torch.set_num_threads(1)
    session = probe_session(args.scenario, changes, args.train_size, args.seeds, args.cache_dir)
    start = time.perf_counter()
    value = in_distribution_settings(session, args.scenario)[0]
    accuracies = [a * 100 for a in validation_accuracies(session, args.scenario, args.norm, value)]
    print(json.dumps({"scenario": args.scenario, "norm": args.norm, "set": changes, "train_size": args.train_size,
                      "seconds": round(time.perf_counter() - start), "accuracy": [round(a, 2) for a in accuracies],
                      "mean": round(statistics.fmean(accuracies), 2)}))


if __name__ == "__main__":
    main()
