"""Data sets for the benchmark: embedded ones (no download, deterministic from a seed) and real ones (torchvision).

``load_dataset(name, ...)`` returns a ``DatasetBundle`` (train and test ``ImageSet``s of uint8 images) for every
name in ``list_datasets()``; ``night_rendering`` turns any image set into its night version.
"""

from .imageset import DatasetBundle, ImageSet, stratified_subset
from .night import night_rendering
from .real import DatasetNotFoundError
from .registry import list_datasets, load_dataset

__all__ = [
    "DatasetBundle",
    "DatasetNotFoundError",
    "ImageSet",
    "list_datasets",
    "load_dataset",
    "night_rendering",
    "stratified_subset",
]
