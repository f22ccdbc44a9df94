"""Shared test configuration: ``pytester`` for the suite integration tests; rows and results for publishing tests."""

import numpy as np
import pytest

pytest_plugins = ["pytester"]


# -- publishing: result rows and a small results folder (tests/test_publish_*.py, test_confusion_publish.py) --


def make_publish_row(**fields):
    """A valid :class:`ResultRow` (noise, quick, digits, batchnorm running_stats, cpu) with ``fields`` changed."""
    from robustbench_norm.results.rows import ResultRow

    base = dict(scenario="noise", profile="quick", dataset="digits", model="quick_cnn", norm="batchnorm",
                norm_kwargs={}, variant="standard", eval_mode="running_stats", corruption="none", severity=0.0,
                train_batch_size=32, seed=0, metric="accuracy", value=0.9, chance=0.1, n_examples=50,
                device="cpu", versions="python=3.11 torch=2", git_commit="abc1234", checkpoint_hash="h",
                wall_seconds=0.1)
    return ResultRow(**{**base, **fields})


def write_small_results(root, *, device: str = "cpu", shift: float = 0.0) -> None:
    """Noise, batch-size, domain-shift, blend and day/night rows (3 seeds), two confusion CSVs, a CN grid and a
    reliability diagram.

    ``shift`` moves every accuracy (a second run that differs). Accuracies (seed s adds 0.01 s):
    noise: clean 0.9; corrupted 0.9 - drop x severity, drop batchnorm/running_stats 0.6, test_batch_stats 0.3,
    groupnorm 0.2; batch size: batchnorm 0.8 - 0.1 at batch 2, groupnorm 0.7 flat, localnorm not trainable
    at batch 2; domain shift: target 0.1 (source_only) and 0.1 / 0.3 (adamatch: batchnorm / contextnorm);
    blend: digits 0.8, shapes 0.4, digits+shapes 0.6 (chance 0.05); day_night: 0.5.
    """
    from PIL import Image

    from robustbench_norm.results.confusion import save_confusion
    from robustbench_norm.results.store import ResultStore

    row = make_publish_row
    rows = []
    for norm, mode, drop in (("batchnorm", "running_stats", 0.6), ("batchnorm", "test_batch_stats", 0.3),
                             ("groupnorm", "standard", 0.2)):
        for seed in range(3):
            for severity in (0.0, 0.5, 1.0):
                cell = dict(norm=norm, eval_mode=mode, corruption="agn", severity=severity, seed=seed, device=device)
                rows.append(row(value=0.9 - drop * severity + 0.01 * seed + shift, **cell))
                rows.append(row(metric="prediction_entropy", value=1.0 - drop * severity / 2, chance=np.nan, **cell))
    for norm, mode in (("batchnorm", "running_stats"), ("groupnorm", "standard"), ("localnorm", "batch")):
        for seed in range(3):
            for batch in (2, 8, 32):
                value = {"batchnorm": 0.8 - (0.1 if batch == 2 else 0.0), "groupnorm": 0.7}.get(norm, 0.75)
                failed = norm == "localnorm" and batch == 2
                rows.append(row(scenario="batch_size", norm=norm, eval_mode=mode, train_batch_size=batch, seed=seed,
                                value=np.nan if failed else value + 0.01 * seed + shift,
                                status="not trainable: batch 2 < num_groups 4" if failed else "ok", device=device))
    for norm, mode, adapted in (("batchnorm", "running_stats", 0.1), ("contextnorm", "cn+", 0.3)):
        for variant in ("source_only", "adamatch"):
            for seed in range(3):
                target = (adapted if variant == "adamatch" else 0.1) + 0.01 * seed + shift
                common = dict(scenario="domain_shift", norm=norm, variant=variant, seed=seed, device=device)
                rows.append(row(dataset="street_digits/test", eval_mode=mode, metric="target_accuracy", value=target,
                                n_examples=40, **common))
                rows.append(row(dataset="digits/test", eval_mode="cn" if norm == "contextnorm" else mode,
                                metric="source_accuracy", value=0.9, **common))
    for norm, mode in (("batchnorm", "running_stats"), ("contextnorm", "cn")):
        for seed in range(3):
            for dataset, value in (("digits", 0.8), ("shapes", 0.4), ("digits+shapes", 0.6)):
                rows.append(row(scenario="blend", dataset=dataset, norm=norm, eval_mode=mode, variant="joint",
                                seed=seed, value=value + 0.01 * seed + shift, chance=0.05,
                                n_examples=100 if dataset == "digits+shapes" else 50, device=device))
        rows += [row(scenario="day_night", dataset="street_digits", norm=norm, eval_mode=mode, variant="joint",
                     seed=seed, value=0.5 + 0.01 * seed + shift, device=device) for seed in range(3)]
    ResultStore(root).write(rows)
    counts = np.diag(np.full(10, 15))  # 3 seeds x 50 images: the noise test set
    counts[0, 0], counts[0, 1] = 10, 5
    save_confusion(counts, root / "quick" / "confusion" / "noise" / "batchnorm__standard__running_stats__agn__0.5",
                   "noise")
    blend = np.diag(np.full(20, 15))  # 3 seeds x 100 images of digits+shapes
    save_confusion(blend, root / "quick" / "confusion" / "blend" / "contextnorm__joint__cn__none__0.0", "blend")
    grid = np.zeros((3 * 8 + 4 * 2, 4 * 8 + 5 * 2, 3), dtype=np.uint8)  # 3 rows of 8 px images, padding 2
    Image.fromarray(grid).save(root / "quick" / "day_night_translation_contextnorm.png")
    diagrams = root / "quick" / "reliability" / "noise"
    diagrams.mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(diagrams / "batchnorm__running_stats__agn__0.0.png")


@pytest.fixture
def publish_row():
    """The factory :func:`make_publish_row`: ``publish_row(norm="groupnorm", value=0.5)``."""
    return make_publish_row


@pytest.fixture
def write_results():
    """The writer :func:`write_small_results` (for tests that need several results folders)."""
    return write_small_results


@pytest.fixture
def small_results(tmp_path):
    """A results folder written by :func:`write_small_results`."""
    root = tmp_path / "results"
    write_small_results(root)
    return root


# -- layers with fused C kernels on the CPU (robustbench_norm/norms/native.py) --


@pytest.fixture(params=["native", "aten"])
def kernel_path(request, monkeypatch):
    """Runs the test on each CPU path of the layers that have one: the C kernels, then the ATen ops that a GPU
    runs (``ROBUSTBENCH_NORM_NATIVE=0``). The native run is skipped where no C compiler can build them."""
    from robustbench_norm.norms import native

    if request.param == "aten":
        monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    elif native.kernels(__import__("torch").zeros(1)) is None:
        pytest.skip("the C kernels are not available here (no C compiler)")
    return request.param
