"""Scenario ``day_night``: day and night images as two contexts (CN paper, section IV-E).

Quick profile: the embedded street digits and their night rendering (gamma, blue tint, sensor noise);
paper profile: two image folders (``--data-dir``/daynight). Rows: accuracy on day and on night. For a
context layer on the input image, the paper's day->night translation (normalise with the day context,
de-normalise with the night context) is saved as an image grid next to the CSV: top row day images,
middle row their translation, bottom row night test images (other scenes: day and night sets are unpaired,
as real day and night photographs are).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustbench_norm._torchvision import import_torchvision
from robustbench_norm.norms import get_norm
from robustbench_norm.norms.routing import context_layers
from suites.bench import Bench, join_parts, run_mixture

SCENARIO = "day_night"
GRID_IMAGES = 8
DAY, NIGHT = 0, 1


def save_translation_grid(model: nn.Module, day: torch.Tensor, night: torch.Tensor, path: Path) -> None:
    """Day images, their CN day->night translation and night images, one row each."""
    layer = context_layers(model)[0]
    with torch.inference_mode():
        translated = layer.translate(day.to(next(model.parameters()).device), DAY, NIGHT).cpu()
    grid = import_torchvision().utils.make_grid(torch.cat([day, translated.clamp(0, 1), night]),
                                                nrow=len(day), padding=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    import_torchvision().utils.save_image(grid, path)


def test_day_night(bench: Bench, norm: str) -> None:
    settings = bench.profile.day_night
    models = run_mixture(bench, SCENARIO, settings, norm)
    if get_norm(norm).placement != "input":
        return  # the translation is defined for a context layer on the image itself
    joint = join_parts(bench, settings)
    images, contexts = joint.test.as_float(), joint.test.contexts
    day, night = images[contexts == DAY][:GRID_IMAGES], images[contexts == NIGHT][:GRID_IMAGES]
    path = bench.store.root / bench.profile.name / f"{SCENARIO}_translation_{norm}.png"
    save_translation_grid(models[bench.seeds[0]], day, night, path)
