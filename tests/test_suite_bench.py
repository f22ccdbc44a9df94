"""The suite's shared services: model initialisation depends on the seed alone, not on test order."""

from __future__ import annotations

import torch
from torch import nn

from robustbench_norm.profiles import get_profile
from robustbench_norm.results import ResultStore
from robustbench_norm.training import CheckpointCache
from suites.bench import Bench


def make_bench(tmp_path, name: str) -> Bench:
    return Bench(profile=get_profile("quick"), device=torch.device("cpu"), seeds=(0,),
                 store=ResultStore(tmp_path / name / "results"), cache=CheckpointCache(tmp_path / name / "cache"),
                 user_kwargs={}, data_dir=None, download=False, update=False, progress=False)


def initial_weights(bench: Bench) -> torch.Tensor:
    model, _ = bench.trained({"seed": 3, "what": "init"}, build=lambda: nn.Linear(4, 3), train=lambda m: [])
    return model.weight.detach().clone()


def test_initial_weights_depend_on_the_seed_not_on_earlier_random_draws(tmp_path):
    first = initial_weights(make_bench(tmp_path, "a"))
    torch.rand(1000)  # another test consumed the global generator in between
    second = initial_weights(make_bench(tmp_path, "b"))
    assert torch.equal(first, second)
