"""The one place that imports torchvision.

The torchvision wheel that pairs with the CPU build of torch 2.13 on these machines is a CUDA build: its
compiled ops (``_C.so``) cannot load, and torchvision 0.28 then fails at import while registering fake
kernels for ``torchvision::nms`` and ``torchvision::qnms``. When (and only when) a plain import fails that
way, we define the two op schemas so the import completes. The suite uses torchvision's pure-Python parts
only (``datasets``, ``transforms.v2``, ``utils``), never ``ops``, ``io`` or JPEG decoding.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment: torch.library.Library | None = None


def _define_missing_op_schemas() -> None:
    global _fragment
    if _fragment is not None:
        return
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _fragment.define(schema)


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, importing it through the op-schema shim if it needs one."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    _forget_partial_import()
    _define_missing_op_schemas()
    return importlib.import_module("torchvision")
