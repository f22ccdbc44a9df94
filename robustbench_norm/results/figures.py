"""Published figures made from the files a run leaves beside its CSVs: confusion matrices and CN translations.

Confusion matrices. The suites save counts as ``confusion/<scenario>/<norm>__<variant>__<mode>__<corruption>``
``__<severity>[__kw<hash>].csv`` (:func:`robustbench_norm.results.confusion.confusion_path`), summed over seeds.
Publishing re-renders each with :func:`~robustbench_norm.results.confusion.heatmap_png` (colour bar, class
names) under a file name that starts with the test set it was counted on. The test set is the one whose
rows of that condition satisfy ``n_examples x number of seeds = sum of the matrix``; when no or several
sets fit, the name says ``unidentified-test-set``. Class names: those the CSV was saved with, else (a CSV
with indices ``0..K-1``) digit sets are their digits, ``shapes`` its ten shape names, CIFAR-10 its ten
classes, unions ``a+b`` the parts' names in order (or the first part's when they share labels); anything
else keeps class indices.

Reliability diagrams (``reliability/<scenario>/*.png``, drawn by the run) are copied as they are.

Translation grids (``<scenario>_translation_<norm>.png``, day_night: rows = day images, their CN
day -> night translation, night images of other scenes) are re-drawn with their rows labelled.

Every PNG records a key of its inputs and of this code (:func:`render_png`): publishing again with
unchanged inputs rewrites nothing.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from robustbench_norm.atomic import atomic_write  # noqa: E402
from robustbench_norm.results import confusion as confusion_module  # noqa: E402
from robustbench_norm.results import plots as plots_module  # noqa: E402
from robustbench_norm.results.confusion import heatmap_png, histogram_entropy  # noqa: E402
from robustbench_norm.results import png as png_module  # noqa: E402
from robustbench_norm.results.png import figure_png  # noqa: E402
from robustbench_norm.results.summary import is_accuracy  # noqa: E402

KEY_CHUNK = "robustbench-norm-inputs"
DIGIT_SETS = frozenset({"digits", "mnist5k", "street_digits", "mnist", "svhn"})
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
UNIDENTIFIED = "unidentified-test-set"
GRID_PADDING = 2  # torchvision.utils.make_grid's default, used by suites/test_day_night.py
GRID_ZOOM = 2  # the grid's 32-px images drawn at twice their size
TRANSLATION_ROWS = {"day_night": ("day (test)", "day -> night (CN translation)", "night (test, other scenes)")}


def code_key() -> bytes:
    """The source of the modules that draw the figures, and the library versions: part of every PNG's key."""
    parts = [Path(module.__file__).read_bytes() for module in (confusion_module, plots_module, png_module)]
    return b"".join(parts) + f"matplotlib={matplotlib.__version__} pillow={Image.__version__}".encode()


def stored_key(path: Path) -> str | None:
    """The input key recorded in an existing PNG (None when absent or unreadable)."""
    try:
        with Image.open(path) as image:
            return image.text.get(KEY_CHUNK)
    except (OSError, ValueError):
        return None


def render_png(path: Path, inputs: bytes, render: Callable[[], bytes]) -> Path:
    """Write ``render()`` to ``path`` with ``inputs``' key, unless the file already has that key."""
    key = hashlib.sha256(inputs + code_key()).hexdigest()
    if stored_key(path) != key:
        png = _with_key(render(), key)
        atomic_write(path, lambda handle: handle.write(png), binary=True)
    return path


def _with_key(png: bytes, key: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(KEY_CHUNK, key)
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        image.save(out, format="PNG", pnginfo=info, optimize=True)
    return out.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file."""
    with Image.open(path) as image:
        return image.size


# -- confusion matrices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfusionFigure:
    """One published confusion matrix: its condition, test set, prediction entropy and file."""

    norm: str
    variant: str
    eval_mode: str
    corruption: str
    severity: float
    kwargs_tag: str
    dataset: str
    entropy: float
    path: Path


def class_names(dataset: str, num_classes: int) -> list[str]:
    """Names of the classes of a (possibly joined ``a+b``) test set; indices when unknown (module doc)."""
    parts = [_part_names(part) for part in dataset.split("+")]
    if all(parts) and sum(len(p) for p in parts) == num_classes:
        return [name for part in parts for name in part]
    if parts[0] and len(parts[0]) == num_classes and all(len(p) == num_classes for p in parts if p):
        return parts[0]
    return [str(index) for index in range(num_classes)]


def _part_names(dataset: str) -> list[str]:
    base = dataset.split("/")[0].split(":")[0].removesuffix("_night")
    if base in DIGIT_SETS:
        return [str(digit) for digit in range(10)]
    if base == "shapes":
        from robustbench_norm.data.shapes import CLASS_NAMES  # deferred: the data package imports torch

        return list(CLASS_NAMES)
    if base == "cifar10":
        return list(CIFAR10_CLASSES)
    return []


def parse_confusion_stem(stem: str) -> tuple[str, str, str, str, float, str] | None:
    """(norm, variant, eval_mode, corruption, severity, kwargs tag) of a confusion file name, or None."""
    parts = stem.split("__")
    tag = parts.pop() if len(parts) == 6 and re.fullmatch(r"kw[0-9a-f]{8}", parts[-1]) else ""
    if len(parts) != 5:
        return None
    try:
        severity = float(parts[4])
    except ValueError:
        return None
    return parts[0], parts[1], parts[2], parts[3], severity, tag


def identify_dataset(rows: pd.DataFrame, condition: tuple[str, str, str, str, float], total: int) -> str:
    """The test set whose rows of the condition count ``total`` predictions over their seeds (module doc)."""
    norm, variant, mode, corruption, severity = condition
    match = rows.loc[(rows["norm"] == norm) & (rows["variant"] == variant) & (rows["eval_mode"] == mode)
                     & (rows["corruption"] == corruption) & (rows["severity"] == severity)
                     & rows["metric"].map(is_accuracy)]
    fits = sorted(dataset for dataset, group in match.groupby("dataset")
                  if int(group["n_examples"].iloc[0]) * group["seed"].nunique() == total)
    return fits[0] if len(fits) == 1 else UNIDENTIFIED


def file_part(text: str) -> str:
    """``text`` as one file-name component (``/`` and other punctuation become ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-.") or "x"


def publish_confusions(source: Path, rows: pd.DataFrame, scenario: str, target: Path) -> list[ConfusionFigure]:
    """Re-render every confusion CSV of ``source`` (a ``confusion/<scenario>`` folder) into ``target``."""
    figures = []
    for csv_path in sorted(source.glob("*.csv")):
        condition = parse_confusion_stem(csv_path.stem)
        if condition is None:
            continue
        table = pd.read_csv(csv_path, index_col=0)
        matrix = table.to_numpy(dtype=np.int64)
        dataset = identify_dataset(rows, condition[:5], int(matrix.sum()))
        saved = [str(name) for name in table.columns]
        indices = [str(index) for index in range(matrix.shape[0])]
        names = saved if saved != indices else class_names(dataset, matrix.shape[0])
        norm, variant, mode, corruption, severity, tag = condition
        where = "clean" if corruption == "none" else f"{corruption} severity {severity:g}"
        title = (f"{scenario}: {norm} / {mode} (training {variant})\n{where} · test set {dataset} · "
                 f"{int(matrix.sum())} predictions, all seeds")
        path = target / f"{file_part(dataset)}__{csv_path.stem}.png"
        render_png(path, csv_path.read_bytes() + repr((names, title)).encode(),
                   lambda: heatmap_png(matrix, names, title))
        predicted = matrix.sum(axis=0)
        entropy = histogram_entropy(predicted) if predicted.sum() > 0 else math.nan
        figures.append(ConfusionFigure(norm, variant, mode, corruption, severity, tag, dataset, entropy, path))
    return figures


def copy_files(source: Path, pattern: str, target: Path) -> list[Path]:
    """Copy the files of ``source`` matching ``pattern`` into ``target`` (unchanged files are not rewritten)."""
    copied = []
    for path in sorted(source.glob(pattern)):
        out = target / path.name
        data = path.read_bytes()
        if not out.is_file() or out.read_bytes() != data:
            atomic_write(out, lambda handle, data=data: handle.write(data), binary=True)
        copied.append(out)
    return copied


# -- translation grids -------------------------------------------------------------------------------------


def publish_translation_grid(source: Path, scenario: str, target: Path) -> Path:
    """The grid of ``source`` with its three rows labelled (module doc), written to ``target``."""
    labels = TRANSLATION_ROWS.get(scenario, ("context 0 (test)", "context 0 -> 1 (CN translation)",
                                             "context 1 (test, other images)"))
    return render_png(target, source.read_bytes() + repr(labels).encode(), lambda: _labelled_grid(source, labels))


def _labelled_grid(source: Path, labels: tuple[str, str, str]) -> bytes:
    """Draw the grid image with a label left of each of its rows (grid: 3 rows, GRID_PADDING px apart)."""
    with Image.open(source) as image:
        pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    row = (height - GRID_PADDING * (len(labels) + 1)) / len(labels)
    centres = [GRID_PADDING + row / 2 + i * (row + GRID_PADDING) for i in range(len(labels))]
    figure, axes = plt.subplots(figsize=(GRID_ZOOM * width / 80 + 2.6, GRID_ZOOM * height / 80 + 0.4), dpi=80)
    try:
        axes.imshow(pixels, interpolation="nearest")
        axes.set_yticks(centres, labels, fontsize=9)
        axes.set_xticks([])
        for side in axes.spines.values():
            side.set_visible(False)
        return figure_png(figure, palette=False)
    finally:
        plt.close(figure)
