"""The paper profile end to end on tiny files in the real formats (a handful of images, one epoch).

Nothing here can download MNIST, SVHN, CIFAR-10/100 or day/night photographs, so the test writes small files
in their formats into a temporary ``--data-dir`` and runs ``pytest suites/ --profile paper`` on them in a
subprocess: the same code path as a real paper-scale run (torchvision loaders, paper nets, AdaMatch), with
the sizes cut down. A ``-p`` plugin substitutes the tiny files' MD5s in torchvision's checksum tables.
Batch sizes of the paper schedules (up to 256) set the minimum image counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.real_format_files import write_cifar, write_daynight, write_mnist, write_svhn

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


def write_tiny_real_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    write_mnist(root, rng, train=200, test=20)
    write_svhn(root, rng, train=192, test=20)
    write_cifar(root, rng, hundred=False, per_file=14)  # 5 training files: 70 images >= batch 64
    write_cifar(root, rng, hundred=True, per_file=260)  # one training file: >= batch 256
    write_daynight(root, rng, size=16, train=32, test=4)  # 2 classes x day/night x 32 = batch 128


@pytest.mark.slow
def test_paper_profile_runs_every_scenario_on_tiny_real_files(pytester, tmp_path, monkeypatch):
    data, results = tmp_path / "data", tmp_path / "results"
    write_tiny_real_data(data)
    pytester.makepyfile(checksum_plugin=CHECKSUM_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}:{ROOT}")
    monkeypatch.setenv("TINY_DATA_DIR", str(data))
    run = pytester.runpytest_subprocess(
        str(ROOT / "suites"), "--profile=paper", f"--data-dir={data}", "--norm=batchnorm,contextnorm",
        "--seeds=1", "--epochs=1", f"--results-dir={results}", f"--cache-dir={tmp_path / 'cache'}",
        "-p", "checksum_plugin", "-p", "no:cacheprovider", "-k", "not batch_size or batchnorm-bs2",
    )
    run.assert_outcomes(passed=17)  # noise 3, domain_shift 2, blend, day_night, superclass per norm; bs2 once
    written = {path.stem for path in (results / "paper").glob("*.csv")}
    assert {"noise", "batch_size", "domain_shift", "blend", "day_night", "superclass"} <= written
    superclass = pd.read_csv(results / "paper" / "superclass.csv")
    assert set(superclass["norm"]) == {"batchnorm", "contextnorm"}
    assert set(superclass.loc[superclass["norm"] == "contextnorm", "eval_mode"]) == {"cn", "cn+"}
    assert (results / "paper" / "day_night_translation_contextnorm.png").is_file()
