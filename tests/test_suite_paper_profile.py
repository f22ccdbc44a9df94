"""The paper profile end to end on tiny files in the real formats (a few hundred images, one epoch).

Nothing here can download MNIST, SVHN, CIFAR-10/100 or day/night photographs, so the test writes small files
in their formats into a temporary ``--data-dir`` (``tests.real_format_files.write_tiny_real_data``) and runs
``pytest suites/ --profile paper`` on them in a subprocess: the same code path as a real paper-scale run
(torchvision loaders, the paper nets, AdaMatch in both variants, the GMM contexts, the ViT baselines), with
the sizes cut down. A ``-p`` plugin substitutes the tiny files' MD5s in torchvision's checksum tables.

Every scenario (and every training variant) of the paper profile runs at least once; the selection keeps
the CPU time down (no LocalNorm voting modes on VGG19, one corruption for the CIFAR-10 noise run, one batch
size of the sweep, CIFAR-10 alone for the Tables V/VI scenario: CIFAR-100 takes the same code path).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.real_format_files import write_tiny_real_data

ROOT = Path(__file__).resolve().parents[1]

CHECKSUM_PLUGIN = '''
import os
from pathlib import Path

import pytest

from tests.real_format_files import patch_cifar_checksums, patch_svhn_checksums

_root = Path(os.environ["TINY_DATA_DIR"])
_patch = pytest.MonkeyPatch()
patch_svhn_checksums(_patch, _root)
patch_cifar_checksums(_patch, _root, hundred=False)
patch_cifar_checksums(_patch, _root, hundred=True)
'''

SELECTED = {
    "test_noise.py::test_noise": ["batchnorm-agn", "batchnorm-apn", "batchnorm-mbn", "contextnorm-agn"],
    "test_noise_cifar10.py::test_noise_cifar10": ["batchnorm-apn", "contextnorm-apn"],
    "test_batch_size.py::test_batch_size": ["batchnorm-bs2"],
    "test_domain_shift.py::test_domain_shift": ["batchnorm-source_only", "batchnorm-adamatch_reference",
                                                "contextnorm-adamatch"],
    "test_mixture.py::test_mixture": ["batchnorm-day_night", "contextnorm-day_night", "contextnorm-blend",
                                      "contextnorm-superclass", "contextnorm_patches-superclass"],
    "test_cifar_mixture.py::test_cifar_mixture": ["batchnorm-cifar10", "contextnorm-cifar10"],
}
NODE_IDS = [f"{ROOT / 'suites'}/{test}[{case}]" for test, cases in SELECTED.items() for case in cases]


@pytest.mark.slow
def test_paper_profile_runs_every_scenario_on_tiny_real_files(pytester, tmp_path, monkeypatch):
    data, results = tmp_path / "data", tmp_path / "results"
    write_tiny_real_data(data)
    pytester.makepyfile(checksum_plugin=CHECKSUM_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}:{ROOT}")
    monkeypatch.setenv("TINY_DATA_DIR", str(data))
    run = pytester.runpytest_subprocess(
        *NODE_IDS, "--profile=paper", f"--data-dir={data}", "--norm=batchnorm,contextnorm,contextnorm_patches",
        "--seeds=1", "--epochs=1", f"--results-dir={results}", f"--cache-dir={tmp_path / 'cache'}",
        "-p", "checksum_plugin", "-p", "no:cacheprovider",
    )
    run.assert_outcomes(passed=len(NODE_IDS))
    paper = results / "paper"
    written = {path.stem for path in paper.glob("*.csv")}
    assert {"noise", "noise_cifar10", "batch_size", "domain_shift", "blend", "day_night", "superclass",
            "cifar_mixture"} <= written
    assert (paper / "day_night_translation_contextnorm.png").is_file()
    _check_vit_tables(pd.read_csv(paper / "superclass.csv"), pd.read_csv(paper / "blend.csv"))
    _check_domain_shift(pd.read_csv(paper / "domain_shift.csv"))
    _check_cifar_mixture(pd.read_csv(paper / "cifar_mixture.csv"))
    assert set(pd.read_csv(paper / "noise_cifar10.csv")["model"]) == {"vgg19"}
    assert set(pd.read_csv(paper / "batch_size.csv")["model"]) == {"resnet18_cifar"}


def _check_vit_tables(superclass: pd.DataFrame, blend: pd.DataFrame) -> None:
    """Tables VII/VIII: every norm and both baselines on the one ViT, with top-5 accuracy."""
    assert set(superclass["model"]) == {"vit_cn"}
    assert set(superclass["norm"]) == {"batchnorm", "contextnorm", "contextnorm_patches", "none"}
    baselines = superclass[superclass["variant"] == "input_baseline"]
    assert set(baselines["norm"]) == {"none", "batchnorm"}
    assert set(superclass.loc[superclass["norm"] == "contextnorm", "eval_mode"]) == {"cn", "cn+"}
    assert "top5_accuracy" in set(superclass["metric"]) and "top5_accuracy" in set(blend["metric"])
    assert set(blend.loc[blend["variant"] == "input_baseline", "norm"]) == {"none", "batchnorm"}


def _check_domain_shift(rows: pd.DataFrame) -> None:
    """Tables IX/X: both AdaMatch variants; the source (MNIST) scored with the target id too."""
    assert set(rows["variant"]) == {"source_only", "adamatch", "adamatch_reference"}
    source = rows[(rows["norm"] == "contextnorm") & (rows["metric"] == "source_accuracy")]
    assert set(source["eval_mode"]) == {"cn", "cn_target_id"}


def _check_cifar_mixture(rows: pd.DataFrame) -> None:
    """Tables V/VI: the four (lr, weight decay) points, the one selected on validation, CN and CN+."""
    grid = {"lr0.001_wd0.0001", "lr0.001_wd2e-05", "lr0.005_wd0.0001", "lr0.005_wd2e-05"}
    assert set(rows["variant"]) == grid | {"selected_on_validation"}
    assert set(rows.loc[rows["norm"] == "contextnorm", "eval_mode"]) == {"cn", "cn+"}
    assert "validation_accuracy" in set(rows["metric"])
    assert {"cifar10", "cifar10/validation"} == set(rows["dataset"])
