"""Sample grids of the embedded data sets, for the documentation: ``python -m robustbench_norm.data.samples [DIR]``.

Writes ``<DIR>/<name>.png`` (default DIR: ``docs/data``) for digits, street_digits, shapes and street_digits_night:
one row per class (label 0 at the top), ``COLUMNS`` examples of the train split (seed 0) per row, drawn with
``torchvision.utils.make_grid`` and enlarged ``ZOOM`` times (nearest neighbour) so single pixels stay visible.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .._torchvision import import_torchvision
from .registry import load_dataset

SAMPLE_SETS = ("digits", "street_digits", "shapes", "street_digits_night")
COLUMNS = 12
ZOOM = 3


def sample_grid(name: str, *, seed: int = 0) -> torch.Tensor:
    """uint8 (3, H, W) grid of ``COLUMNS`` train images of each class of data set ``name``."""
    bundle = load_dataset(name, seed=seed, train_size=20 * COLUMNS if name != "digits" else None, channels=3)
    rows = [bundle.train.images[bundle.train.labels == label][:COLUMNS] for label in range(bundle.num_classes)]
    return import_torchvision().utils.make_grid(torch.cat(rows), nrow=COLUMNS, padding=2)


def write_samples(directory: Path) -> list[Path]:
    """Write one PNG grid per set in ``SAMPLE_SETS`` into ``directory``; returns the paths written."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SAMPLE_SETS:
        grid = sample_grid(name)
        image = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
        path = directory / f"{name}.png"
        image.resize((image.width * ZOOM, image.height * ZOOM), Image.NEAREST).save(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/data")):
        print(written)
