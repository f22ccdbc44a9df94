"""Cost of every registered normalization layer, and the table in ``docs/layer-cost.md`` (issue 14).

For each layer and input shape: the time of one training-mode forward + backward (input and parameter
gradients), best of ``ROUNDS`` (``MORE_ROUNDS`` for short steps) after a warm-up, every layer of a shape timed
once per round in turn so that a layer and its base norm see the same machine load; the ATen ops of that step
(all / non-view); and the time of one whole training step of the quick net (``quick_cnn``: forward,
cross-entropy, backward, SGD) with the layer in place, which is what a user pays. On the CPU torch runs one
thread.

    python benchmarks/layer_cost.py --json after.json                    # this checkout, CPU
    python benchmarks/layer_cost.py --json gpu.json --device cuda        # this checkout, GPU
    python benchmarks/layer_cost.py --revision REV --json before.json    # the package at git REV
    python benchmarks/layer_cost.py --run "CPU title" after.json before.json [--run ...] [--gpu gpu.json] \\
        [--notes notes.md]                                               # write docs/layer-cost.md

``--revision`` extracts ``robustbench_norm`` at REV (``git archive``) into a temporary folder, adds this
checkout's ``robustbench_norm/norms/cost.py`` (the op counter and layer builder, which only use registry
calls that REV has too) and runs this script there in a subprocess, so both columns come from one method.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from robustbench_norm.models import build_model
from robustbench_norm.norms import get_norm, list_norms, use_context
from robustbench_norm.norms.cost import BASE_NORM, cost_layer, count_ops, training_step

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "layer-cost.md"
ROUNDS = 10
MORE_ROUNDS = {"batch 2": 100}
"""Shapes whose steps take well under a millisecond get more rounds: there the scheduler's and the timer's
jitter are a large part of a step, and a layer's ratio to its base moved by up to 8 % between two runs of best
of 10 (enough to flip a verdict at the edge of a target)."""
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "small images": (64, 64, 32, 32),
    "large maps": (8, 64, 128, 128),
    "batch 2": (2, 64, 32, 32),
}
LCN_WINDOWS = {"small images": (7,), "large maps": (7, 31, 127, 255), "batch 2": (7,)}
TARGETS = {
    "localnorm": 1.3,
    "ilm_gn": 1.5,
    "ilm_in": 1.5,
    "ilm_ln": 1.5,
    "positionalnorm": 1.5,
    "switchnorm": 2.0,
    "mixturenorm": 5.0,
    "lcn": 3.0,
}
"""Issue 14's ceiling on each layer's time over its base norm's (:data:`BASE_NORM`)."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
QUICK_NET = {"arch": "quick_cnn", "num_classes": 10, "in_channels": 1, "image_size": 28, "batch": 64}

Entry = tuple[str, str, dict[str, Any]]  # (row label, registered name, kwargs)


def entries(shape_label: str, names: list[str]) -> list[Entry]:
    """The rows of a shape: every registered norm with its defaults, LCN also at fixed windows."""
    rows: list[Entry] = [(name, name, {}) for name in names]
    if "lcn" in names:
        rows += [(f"lcn (window {w})", "lcn", {"window_size": w}) for w in LCN_WINDOWS[shape_label]]
    return rows


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_times(
    steps: dict[str, Callable[[], Any]], device: str, rounds: int = ROUNDS
) -> dict[str, tuple[float, float]]:
    """Best wall time and best thread CPU time (ms) of each step over ``rounds`` rounds, the steps run in turn
    within a round. On a loaded machine the CPU time leaves out the time the thread waited for a core."""
    for step in steps.values():
        step()
    best = {label: (float("inf"), float("inf")) for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            _synchronize(device)
            wall, cpu = time.perf_counter(), time.thread_time()
            step()
            _synchronize(device)
            elapsed = ((time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3)
            best[label] = (min(best[label][0], elapsed[0]), min(best[label][1], elapsed[1]))
    return best


def measure_shape(shape_label: str, names: list[str], device: str) -> dict[str, dict[str, Any]]:
    """Time and ATen ops of one training step of every row of ``shape_label``."""
    shape = SHAPES[shape_label]
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], Any]] = {}
    for label, name, kwargs in entries(shape_label, names):
        try:
            layer = cost_layer(name, shape, **kwargs)
            layer.module.to(device)
            ops = count_ops(layer)
            steps[label] = training_step(layer)
            rows[label] = {"name": name, "ops": ops.total, "kernels": ops.kernels}
        except Exception as error:  # noqa: BLE001 - a layer that cannot run this shape is reported, not fatal
            rows[label] = {"name": name, "error": f"{type(error).__name__}: {error}"}
    for label, (wall, cpu) in best_times(steps, device, MORE_ROUNDS.get(shape_label, ROUNDS)).items():
        rows[label].update(ms=wall, cpu_ms=cpu)
    return rows


def quick_net_step(name: str, device: str) -> Callable[[], None]:
    """One SGD training step of the quick net with norm ``name`` on a fixed random batch."""
    geometry = {key: QUICK_NET[key] for key in ("num_classes", "in_channels", "image_size")}
    torch.manual_seed(0)
    model = build_model(QUICK_NET["arch"], norm=name, **geometry).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    size = QUICK_NET["image_size"]
    images = torch.randn(QUICK_NET["batch"], QUICK_NET["in_channels"], size, size, device=device)
    labels = torch.randint(0, QUICK_NET["num_classes"], (QUICK_NET["batch"],), device=device)
    ids = torch.zeros(QUICK_NET["batch"], dtype=torch.long, device=device)
    needs_context = get_norm(name).needs_context

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with use_context(model, ids) if needs_context else nullcontext():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def measure_quick_net(names: list[str], device: str) -> dict[str, dict[str, Any]]:
    """Time of one training step of the quick net with each norm (token norms cannot go in it)."""
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], Any]] = {}
    for name in names:
        if get_norm(name).placement == "tokens":
            continue
        try:
            steps[name] = quick_net_step(name, device)
            rows[name] = {}
        except Exception as error:  # noqa: BLE001 - reported in the table
            rows[name] = {"error": f"{type(error).__name__}: {error}"}
    for name, (wall, cpu) in best_times(steps, device).items():
        rows[name].update(ms=wall, cpu_ms=cpu)
    return rows


def load_average() -> str:
    """``uptime``'s load averages (1, 5, 15 min), or 'n/a'."""
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def steady_heap() -> str:
    """Keeps freed blocks of up to 32 MB in the process's heap (glibc's ``mallopt``: no mmap per allocation,
    no trimming back to the OS), so that every timed step reuses memory. Otherwise whether a step's fresh
    16 MB tensors come from the heap or as new zeroed pages from the OS depends on the allocations before
    it, and on this 2-core VM the page faults added 1-10 ms at random to single rows (a layer at 2x its base
    in one run and 1.2x in the next). Applies to every row alike; larger tensors are mapped fresh in every
    row. Returns how the heap was set (recorded in the results)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        applied = False
    return "steady (glibc mallopt: mmap threshold 32 MB, no trimming)" if applied else "default"


def measure(device: str, shape_labels: list[str], quick_net: bool) -> dict[str, Any]:
    """Every measurement of this process's ``robustbench_norm`` on ``device``."""
    heap = steady_heap()
    if device == "cpu":
        torch.set_num_threads(1)
    names = list_norms()
    result: dict[str, Any] = {
        "meta": {
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_before": load_average(),
            "rounds": ROUNDS,
            "more_rounds": MORE_ROUNDS,
            "heap": heap,
        },
        "shapes": {label: measure_shape(label, names, device) for label in shape_labels},
    }
    if quick_net:
        result["quick_net"] = measure_quick_net(names, device)
    result["meta"]["load_after"] = load_average()
    return result


def measure_revision(revision: str, json_path: Path, shape_labels: list[str]) -> None:
    """Run this script on the package at git ``revision`` (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(
            ["git", "archive", revision, "robustbench_norm"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        shutil.copy(ROOT / "robustbench_norm" / "norms" / "cost.py", Path(folder) / "robustbench_norm" / "norms")
        command = [sys.executable, str(Path(__file__).resolve()), "--json", str(json_path.resolve())]
        command += [arg for label in shape_labels for arg in ("--shape", label)]
        subprocess.run(command, cwd=folder, env={**os.environ, "PYTHONPATH": folder}, check=True)


def ratio(rows: dict[str, dict[str, Any]], label: str, base: str | None, key: str = "ms") -> float | None:
    """Time (``key``: "ms" wall, "cpu_ms" thread CPU) of row ``label`` over that of row ``base``, or None."""
    if base is None or key not in rows.get(label, {}) or key not in rows.get(base, {}):
        return None
    return rows[label][key] / rows[base][key]


def base_of(label: str, rows: dict[str, dict[str, Any]]) -> str | None:
    """The base norm row of ``label`` (:data:`BASE_NORM` of its registered name)."""
    return BASE_NORM.get(rows[label].get("name", label))


def _ms(rows: dict[str, dict[str, Any]] | None, label: str) -> str:
    if rows is None or label not in rows:
        return ""
    return f"{rows[label]['ms']:.1f}" if "ms" in rows[label] else "error"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _ops(rows: dict[str, dict[str, Any]] | None, label: str) -> str:
    if rows is None or "ops" not in rows.get(label, {}):
        return ""
    return f"{rows[label]['ops']:,} ({rows[label]['kernels']:,})"


def _target(label: str, rows: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(target, met) cells for row ``label``."""
    name = rows[label].get("name", label)
    if name not in TARGETS:
        return "", ""
    wall, cpu = ratio(rows, label, base_of(label, rows)), ratio(rows, label, base_of(label, rows), "cpu_ms")
    if wall is None:
        return f"<= {TARGETS[name]:g}x", ""
    verdicts = [value <= TARGETS[name] for value in (wall, cpu) if value is not None]
    met = "yes" if all(verdicts) else ("**no**" if not any(verdicts) else "wall or cpu only")
    return f"<= {TARGETS[name]:g}x", met


def shape_table(label: str, after: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    """Markdown rows comparing before and after on one shape (ratios of wall times, and of thread CPU times)."""
    rows_after = after["shapes"][label]
    rows_before = before["shapes"].get(label) if before else None
    lines = [
        "| layer | base | before ms | before / base (cpu) | after ms | after / base (cpu) | after / BN | target "
        "| met | ATen ops before | ATen ops after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows_after:
        base = base_of(row, rows_after)
        target, met = _target(row, rows_after)
        cells = [
            row, base or "", _ms(rows_before, row), _both(rows_before, row, base), _ms(rows_after, row),
            _both(rows_after, row, base), _times(ratio(rows_after, row, "batchnorm")), target, met,
            _ops(rows_before, row), _ops(rows_after, row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _both(rows: dict[str, dict[str, Any]] | None, label: str, base: str | None) -> str:
    """'wall-time ratio (CPU-time ratio)', or '' without data."""
    if rows is None:
        return ""
    wall, cpu = ratio(rows, label, base), ratio(rows, label, base, "cpu_ms")
    if wall is None:
        return ""
    return f"{wall:.2f}x" + ("" if cpu is None else f" ({cpu:.2f}x)")


def gpu_table(gpu: dict[str, Any]) -> list[str]:
    """Markdown rows of the GPU run: ms and ratio to the base per shape."""
    labels = list(gpu["shapes"])
    header = "| layer | base | " + " | ".join(f"{s} ms | {s} / base" for s in labels) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(labels)]
    first = gpu["shapes"][labels[0]]
    for row in first:
        base = base_of(row, first)
        cells = [row, base or ""]
        for shape_label in labels:
            rows = gpu["shapes"][shape_label]
            cells += [_ms(rows, row), _times(ratio(rows, row, base))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def quick_net_table(after: dict[str, Any], before: dict[str, Any] | None, gpu: dict[str, Any] | None) -> list[str]:
    """Markdown rows of the quick-net training step, as ms and as a multiple of the BatchNorm net's."""
    columns = [("before", before), ("after", after), ("GPU", gpu)]
    columns = [(title, run["quick_net"]) for title, run in columns if run and "quick_net" in run]
    lines = ["| norm | " + " | ".join(f"{t} ms | {t} / BN net (cpu)" for t, _ in columns) + " |",
             "|---|" + "---|---|" * len(columns)]
    for name in after["quick_net"]:
        cells = [name]
        for _, rows in columns:
            cells += [_ms(rows, name), _both(rows, name, "batchnorm" if name != "batchnorm" else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_section(title: str, after: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    """The tables of one CPU run (this checkout, and the code before if measured alongside)."""
    meta = after["meta"]
    lines = [
        "",
        f"## {title}",
        "",
        f"{meta['device']}, torch {meta['torch']}, {meta['threads']} thread, heap {meta.get('heap', 'default')}; "
        f"load average (1, 5, 15 min) "
        f"{meta['load_before']} before and {meta['load_after']} after the run of this checkout.",
    ]
    if before:
        lines.append(
            f"\"before\" is the code before this work, measured right after by the same script "
            f"(load {before['meta']['load_before']} before, {before['meta']['load_after']} after)."
        )
    for label in after["shapes"]:
        lines += ["", f"### {label}: input {tuple(SHAPES[label])}", ""] + shape_table(label, after, before)
    if "quick_net" in after:
        lines += [
            "",
            f"### One training step of the quick net ({QUICK_NET['arch']}, batch {QUICK_NET['batch']}, "
            f"{QUICK_NET['image_size']}x{QUICK_NET['image_size']}x{QUICK_NET['in_channels']})",
            "",
        ] + quick_net_table(after, before, None)
    return lines


def _more_rounds() -> str:
    return ", ".join(f"{rounds} at {label}, whose steps take under 1 ms" for label, rounds in MORE_ROUNDS.items())


def render_doc(
    runs: list[tuple[str, dict[str, Any], dict[str, Any] | None]], gpu: dict[str, Any] | None, notes: str
) -> str:
    """The text of ``docs/layer-cost.md``: ``runs`` are (title, this checkout, before) CPU runs."""
    lines = [
        "# Layer cost",
        "",
        f"Time of one training-mode forward + backward (input and parameter gradients) of every registered "
        f"normalization layer, best of {ROUNDS} ({_more_rounds()}) after a warm-up, all layers of a shape timed in "
        "turn in each round (so a layer and its base norm see the same load), and its ATen ops counted with a "
        "dispatch-mode counter: all ops, and in parentheses the non-view ops (kernel launches on a GPU). \"base\" "
        "is the norm the layer reduces to or extends (`robustbench_norm.norms.cost.BASE_NORM`); the targets are "
        "issue 14's. "
        "Produced by `benchmarks/layer_cost.py` (its docstring has the commands); "
        "`pytest benchmarks/bench_norms.py --benchmark-only` times the same steps as pytest-benchmark groups.",
    ]
    if notes:
        lines += ["", notes]
    for title, after, before in runs:
        lines += run_section(title, after, before)
    if gpu:
        lines += ["", f"## GPU: {gpu['meta']['device']}, torch {gpu['meta']['torch']}", ""] + gpu_table(gpu)
        if "quick_net" in gpu:
            lines += ["", "### One training step of the quick net on the GPU", ""]
            lines += quick_net_table(gpu, None, None)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="measure and write the results here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", action="append", choices=list(SHAPES), help="shapes to measure (default all)")
    parser.add_argument("--no-quick-net", action="store_true", help="skip the quick-net training step")
    parser.add_argument("--revision", help="measure the package at this git revision instead")
    parser.add_argument(
        "--run", nargs="+", action="append", default=[], metavar="TITLE AFTER [BEFORE]",
        help="a CPU run for the doc: its title, this checkout's results and optionally the code before's",
    )
    parser.add_argument("--gpu", type=Path, help="results of this checkout on a GPU, for the doc")
    parser.add_argument("--notes", type=Path, help="a markdown file whose text goes under the doc's intro")
    args = parser.parse_args(argv)
    shape_labels = args.shape or list(SHAPES)
    if args.revision:
        measure_revision(args.revision, args.json, shape_labels)
    elif args.json:
        result = measure(args.device, shape_labels, quick_net=not args.no_quick_net)
        args.json.write_text(json.dumps(result, indent=1))
    if args.run:
        runs = [(title, _read(Path(after)), _read(Path(rest[0])) if rest else None) for title, after, *rest in args.run]
        notes = args.notes.read_text().strip() if args.notes else ""
        DOC.write_text(render_doc(runs, _read(args.gpu), notes))


def _read(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path else None


if __name__ == "__main__":
    main()
