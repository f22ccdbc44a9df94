"""``robustbench-norm sweep`` and ``merge`` (issue 9): real sweeps through submitit's local executor (each job
its own subprocess), the cache lock, faults (unknown executor, no SLURM, unwritable cache, a diverging or
killed job), the dry run's listing and estimate, evaluation from the cache, and merging result folders.

The sweeps train the quick profile's noise and blend models for BatchNorm and GroupNorm, one seed, one epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_norm import cli
from robustbench_norm.profiles import get_profile
from robustbench_norm.results import ResultStore, summarize
from robustbench_norm.sweep import (
    ADAMATCH,
    SUPERVISED,
    ClusterOptions,
    SessionOptions,
    SweepError,
    SweepJob,
    Work,
    Workload,
    check_executor,
    cluster_options,
    estimate_hours,
    merge_results,
    plan_sweep,
    run_jobs,
    train_job,
    training_device,
    waves,
)
from robustbench_norm.training import CheckpointCache

SUITES = Path(__file__).resolve().parents[1] / "suites"
NORMS = ("batchnorm", "groupnorm")
TRAINING_LINE = re.compile(r"^(\S+) (\S+) .* \[([0-9a-f]{12})\]: training in process (\d+)", re.MULTILINE)


def sweep_args(cache: Path, logs: Path, *extra: str, scenarios: str = "noise,blend", epochs: int = 1) -> list[str]:
    return ["sweep", "--norm", ",".join(NORMS), "--scenario", scenarios, "--seeds", "1", "--epochs", str(epochs),
            "--cache-dir", str(cache), "--log-dir", str(logs), *extra]


def run_cli(args: list[str], **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_norm.cli", *args], capture_output=True, text=True,
                          timeout=600, **popen)


def checkpoints(cache: Path) -> dict[str, int]:
    """Checkpoint file name -> modification time (ns): the cache's own record of what was trained when."""
    return {path.name: path.stat().st_mtime_ns for path in cache.glob("*.pt")}


def reports(logs: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(logs.glob(f"*/report.json"))]


def training_lines(logs: Path) -> list[tuple[str, str, str, int]]:
    """(scenario, norm, key prefix, pid) of every 'training in process' line of the jobs' logs."""
    return [(m[1], m[2], m[3], int(m[4])) for log in logs.glob("*/*/*_log.out")
            for m in TRAINING_LINE.finditer(log.read_text())]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """A cache filled by one local sweep (noise and blend, two norms): (cache, logs, checkpoints)."""
    root = tmp_path_factory.mktemp("swept")
    cache, logs = root / "cache", root / "logs"
    done = run_cli(sweep_args(cache, logs))
    assert done.returncode == 0, done.stdout + done.stderr
    return cache, logs, checkpoints(cache)


# -- sweeps with real subprocesses ----------------------------------------------------------------------------

def test_sweep_trains_each_model_once_into_the_cache(swept):
    cache, logs, trained = swept
    [report] = reports(logs)
    assert len(trained) == 4  # noise and blend x batchnorm and groupnorm x seed 0
    assert sorted(job["status"] for job in report["jobs"]) == ["trained"] * 4
    assert {f"{job['key']}.pt" for job in report["jobs"]} == set(trained)
    assert {(job["scenario"], job["norm"]) for job in report["jobs"]} == {(s, n) for s in ("noise", "blend")
                                                                           for n in NORMS}


def test_rerun_submits_nothing_and_dry_run_lists_every_job_cached(swept):
    cache, logs, trained = swept
    again = run_cli(sweep_args(cache, logs))
    assert again.returncode == 0, again.stderr
    assert "4 cached, 0 not trainable, 0 to train" in again.stdout
    listing = run_cli(sweep_args(cache, logs, "--dry-run"))
    lines = [line.split() for line in listing.stdout.splitlines() if line.startswith(("noise ", "blend "))]
    assert sorted((line[0], line[1]) for line in lines) == sorted((s, n) for s in ("noise", "blend") for n in NORMS)
    assert all(line[-1] == "yes" for line in lines)
    assert {f"{line[-2]}" for line in lines} == {name[:16] for name in trained}
    assert "estimated training time, to train: nothing measured" in listing.stdout
    assert re.search(r"estimated training time, all planned: \d+\.\d\d cpu hours", listing.stdout)
    assert checkpoints(cache) == trained and len(reports(logs)) == 1


def test_suite_after_the_sweep_trains_nothing(swept, pytester, tmp_path):
    cache, _, trained = swept
    result = pytester.runpytest_subprocess(
        str(SUITES / "test_noise.py"), f"--norm={','.join(NORMS)}", f"--cache-dir={cache}", "--epochs=1",
        "--seeds=1", f"--results-dir={tmp_path / 'results'}", f"--baselines-dir={tmp_path / 'none'}")
    result.assert_outcomes(passed=len(NORMS) * len(get_profile("quick").noise.severities))  # norms x corruptions
    assert checkpoints(cache) == trained  # no checkpoint written or rewritten
    rows = ResultStore(tmp_path / "results").read("quick", "noise")
    assert set(rows["norm"]) == set(NORMS) and len(rows) > 0


def test_evaluate_from_the_cache_trains_nothing_and_names_pairs_it_cannot_evaluate(swept, tmp_path):
    cache, logs, trained = swept
    results = tmp_path / "results"
    done = run_cli(sweep_args(cache, logs, "--evaluate", "--results-dir", str(results), scenarios="blend"))
    assert done.returncode == 0, done.stderr
    assert set(ResultStore(results).read("quick", "blend")["norm"]) == set(NORMS)
    missing = run_cli(["sweep", "--norm", "layernorm", "--scenario", "blend", "--seeds", "1", "--epochs", "1",
                       "--cache-dir", str(cache), "--evaluate", "--results-dir", str(results)])
    assert missing.returncode == 1
    assert "not evaluated: blend layernorm: model(s) missing from the cache" in missing.stdout
    assert checkpoints(cache) == trained


def test_killed_job_is_the_only_one_retrained(tmp_path):
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    args = sweep_args(cache, logs, "--array-parallelism", "2", scenarios="noise", epochs=2)
    sweep = subprocess.Popen([sys.executable, "-m", "robustbench_norm.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (lines := [line for line in training_lines(logs) if line[1] == "batchnorm"]):
            assert time.monotonic() < deadline and sweep.poll() is None, "the batchnorm job never started training"
            time.sleep(0.05)
        _, _, killed, pid = lines[0]
        os.kill(pid, signal.SIGKILL)  # mid-training
        out, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 1, out + err
    [report] = reports(logs)
    status = {job["key"][:12]: job for job in report["jobs"]}
    assert status[killed]["status"] == "failed" and status[killed]["reason"].startswith("no result")
    assert Path(status[killed]["log"]).is_file() and f"FAILED noise batchnorm" in out
    assert [job["status"] for key, job in status.items() if key != killed] == ["trained"]
    before = checkpoints(cache)
    assert len(before) == 1 and not any(name.startswith(killed) for name in before)  # nothing half-written
    assert not list(cache.glob(".*.tmp"))

    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    retrained = reports(logs)[-1]["jobs"]
    assert [(job["key"][:12], job["status"]) for job in retrained] == [(killed, "trained")]
    after = checkpoints(cache)
    assert len(after) == 2 and all(after[name] == mtime for name, mtime in before.items())


def test_two_sweeps_at_once_train_each_spec_once(tmp_path):
    cache = tmp_path / "cache"
    sweeps = [subprocess.Popen([sys.executable, "-m", "robustbench_norm.cli",
                                *sweep_args(cache, tmp_path / f"logs{i}", "--array-parallelism", "2",
                                            scenarios="noise")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    finally:
        for sweep in sweeps:
            sweep.kill()
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    trained_keys = [line[2] for i in (0, 1) for line in training_lines(tmp_path / f"logs{i}")]
    assert sorted(trained_keys) == sorted(name[:12] for name in checkpoints(cache))  # each key exactly once
    assert len(trained_keys) == 2
    statuses = [job["status"] for i in (0, 1) for report in reports(tmp_path / f"logs{i}") for job in report["jobs"]]
    assert statuses.count("trained") == 2 and set(statuses) <= {"trained", "loaded"}


# -- the lock, in one process ----------------------------------------------------------------------------------

def test_cache_lock_trains_a_key_once_when_two_threads_race(tmp_path):
    cache, spec, calls = CheckpointCache(tmp_path), {"device": "cpu", "what": "race"}, []
    started = threading.Event()

    def slow_train(model: nn.Module) -> None:
        calls.append(threading.get_ident())
        started.set()
        time.sleep(0.5)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.train_or_load(spec, nn.Linear(2, 2), slow_train)))
               for _ in range(2)]
    threads[0].start()
    started.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1
    assert sorted(result.loaded for result in results) == [False, True]
    assert not list(tmp_path.glob(".*.lock"))  # the lock file goes with its last holder


# -- faults and bad input ----------------------------------------------------------------------------------------

def test_unknown_executor_is_a_clear_error(capsys, tmp_path):
    assert cli.main(sweep_args(tmp_path / "cache", tmp_path / "logs", "--executor", "kubernetes")) == 2
    assert "unknown executor 'kubernetes'; valid executors: ('local', 'slurm')" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_slurm_without_slurm_is_refused_before_submitting(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun or sacct
    assert cli.main(sweep_args(tmp_path / "cache", tmp_path / "logs", "--executor", "slurm")) == 2
    err = capsys.readouterr().err
    assert "executor 'slurm' needs SLURM's commands sbatch, srun, sacct on PATH" in err
    assert "Nothing was submitted" in err and not (tmp_path / "logs").exists()
    for command in ("sbatch", "srun", "sacct"):
        (tmp_path / command).write_text("#!/bin/sh\n")
        (tmp_path / command).chmod(0o755)
    check_executor("slurm")  # found on PATH: accepted


def test_slurm_submission_is_one_array_with_the_options_asked_for(capsys, tmp_path, monkeypatch):
    """With stand-ins for SLURM's commands: the sbatch script submitit writes, submitted without waiting."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    fakes = {"sbatch": f'cp "$1" {script}; echo "Submitted batch job 4242"', "srun": "exit 1", "sacct": "exit 1"}
    for command, body in fakes.items():
        (bin_dir / command).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"partition": "gpu", "time_min": 90, "array_parallelism": 1}))
    assert cli.main(sweep_args(tmp_path / "cache", tmp_path / "logs", "--executor", "slurm", "--config", str(config),
                               "--time-min", "30", "--no-wait", scenarios="blend")) == 0
    sbatch = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --time=30", "#SBATCH --array=0-1%1", f"#SBATCH --job-name=robustbench-norm"):
        assert line in sbatch
    [report] = reports(tmp_path / "logs")
    assert report["device"] == "cuda" and [job["status"] for job in report["jobs"]] == ["submitted"] * 2
    assert "submitted 2 job(s): 4242_0, 4242_1" in capsys.readouterr().out


def test_unwritable_cache_is_refused_before_submitting(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cache = tmp_path / "file" / "cache"
    assert cli.main(sweep_args(cache, tmp_path / "logs", scenarios="blend")) == 2
    err = capsys.readouterr().err
    assert f"checkpoint cache folder {cache} is not writable" in err
    assert not (tmp_path / "logs").exists()


def test_diverging_job_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import submitit

    from robustbench_norm.scenarios.session import Session

    options = SessionOptions("quick", "cpu", 1, 1, "{}", None, str(tmp_path / "cache"), 1)
    jobs = plan_sweep(options, ["blend"], list(NORMS))
    train = Session.train_supervised

    def diverge_first(self, model, *args, **kwargs):
        history = train(self, model, *args, **kwargs)
        if not hasattr(diverge_first, "done"):
            diverge_first.done = True
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return history

    monkeypatch.setattr(Session, "train_supervised", diverge_first)
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="debug")  # in process: the patch holds
    outcomes = run_jobs(executor, waves(jobs, "local", ClusterOptions(array_parallelism=2)), echo=lambda _: None)
    assert [outcome.status for outcome in outcomes] == ["diverged", "trained"]
    assert "non-finite values" in outcomes[0].reason and outcomes[0].failed
    assert len(checkpoints(tmp_path / "cache")) == 1  # the diverged model is not cached, the other is


def test_worker_refuses_a_job_whose_key_it_does_not_plan(tmp_path):
    options = SessionOptions("quick", "cpu", 1, 1, "{}", None, str(tmp_path), 1)
    [job] = plan_sweep(options, ["blend"], ["batchnorm"])
    with pytest.raises(RuntimeError, match="plans other cache keys"):
        train_job(replace(job, key="0" * 64))


# -- options ---------------------------------------------------------------------------------------------------

def test_cluster_options_from_a_file_with_the_command_line_on_top(tmp_path):
    toml = tmp_path / "cluster.toml"
    toml.write_text('partition = "gpu"\ngpus_per_job = 1\ntime_min = 90\narray_parallelism = 8\n')
    options = cluster_options(toml, {"time_min": 30, "partition": None})
    assert (options.partition, options.gpus_per_job, options.time_min, options.array_parallelism) == ("gpu", 1, 30, 8)
    as_json = tmp_path / "cluster.json"
    as_json.write_text(json.dumps({"partition": "a100", "mem_gb": 32}))
    assert cluster_options(as_json, {}).mem_gb == 32
    as_json.write_text(json.dumps({"partitoin": "a100"}))
    with pytest.raises(SweepError, match=r"unknown key\(s\) \['partitoin'\]; valid keys: \['partition'"):
        cluster_options(as_json, {})
    with pytest.raises(SweepError, match="gpus_per_job must be an integer >= 0, got -1"):
        ClusterOptions(gpus_per_job=-1)
    (tmp_path / "cluster.yaml").write_text("partition: gpu\n")
    with pytest.raises(SweepError, match="must end in .json or .toml"):
        cluster_options(tmp_path / "cluster.yaml", {})


def test_training_device():
    assert training_device("auto", "slurm", None) == "cuda"
    assert training_device("auto", "slurm", 0) == "cpu"
    assert training_device("cpu", "local", None) == "cpu"
    with pytest.raises(SweepError, match="device 'cuda' needs --gpus-per-job >= 1"):
        training_device("cuda", "slurm", 0)
    with pytest.raises(SweepError, match="unknown device 'tpu'"):
        training_device("tpu", "local", None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            training_device("cuda", "local", None)


def test_plan_keys_name_the_workers_device_and_not_trainable_batch_sizes_are_skipped(tmp_path):
    cpu = plan_sweep(SessionOptions("quick", "cpu", 1, 1, "{}", None, str(tmp_path), 1), ["batch_size"],
                     ["localnorm"])
    cuda = plan_sweep(SessionOptions("quick", "cuda", 1, 1, "{}", None, str(tmp_path), 1), ["batch_size"],
                      ["localnorm"])
    assert {job.key for job in cpu}.isdisjoint(job.key for job in cuda)  # planned here for GPU workers
    assert all(job.work.workload.device == "cuda" for job in cuda)
    skipped = [job for job in cpu if job.skip]
    assert skipped and all(job.skip.startswith("not trainable") for job in skipped)
    assert len(skipped) < len(cpu)


def test_paper_dry_run_lists_the_jobs_and_gpu_hours_without_slurm_here(tmp_path, monkeypatch, capsys):
    from tests.real_format_files import patch_cifar_checksums, patch_svhn_checksums, write_tiny_real_data

    data = tmp_path / "data"
    write_tiny_real_data(data)
    patch_svhn_checksums(monkeypatch, data)
    for hundred in (False, True):
        patch_cifar_checksums(monkeypatch, data, hundred=hundred)
    assert cli.main(["sweep", "--profile", "paper", "--data-dir", str(data), "--norm", "batchnorm", "--seeds", "1",
                     "--scenario", "noise,domain_shift", "--executor", "slurm", "--cache-dir", str(tmp_path / "cache"),
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [line.split() for line in out.splitlines() if line.startswith(("noise ", "domain_shift "))]
    assert len(jobs) == 1 + 3 and all(line[-1] == "no" for line in jobs)  # one noise model, three variants
    assert re.search(r"estimated training time, to train: \d+\.\d\d cuda hours", out)  # slurm: GPU jobs


def test_estimate_is_images_over_measured_throughput():
    def job(workload: Workload, images: int) -> SweepJob:
        return SweepJob(SessionOptions(), "noise", "batchnorm", None, "-", 0, "k", Work(workload, images))

    fast = Workload("cuda", "resnet20", SUPERVISED, 64, 3, 32)
    slow = Workload("cuda", "wrn28_2", ADAMATCH, 64, 3, 32)
    unknown = Workload("cuda", "resnet20", SUPERVISED, 7, 3, 32)
    estimate = estimate_hours([job(fast, 7200), job(slow, 3600), job(unknown, 10)], {fast: 2.0, slow: 1.0})
    assert estimate.hours == {"cuda": pytest.approx(1.0 + 1.0)}
    assert [j.work.workload for j in estimate.unmeasured] == [unknown]


# -- results from many machines ---------------------------------------------------------------------------------

def test_merge_keeps_other_devices_and_the_later_source_wins_identical_keys(tmp_path, capsys, publish_row,
                                                                             write_results):
    cpu, gpu, again, into = (tmp_path / name for name in ("cpu", "gpu", "again", "into"))
    write_results(cpu, device="cpu")
    write_results(gpu, device="cuda", shift=0.05)
    ResultStore(again).write([publish_row(corruption="agn", value=0.5)])  # a key of the cpu folder, another value
    assert cli.main(["merge", str(cpu), str(gpu), str(again), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    noise, per_device = ResultStore(into).read("quick", "noise"), len(ResultStore(cpu).read("quick", "noise"))
    assert len(noise) == 2 * per_device  # both devices kept
    assert f"quick/noise: {2 * per_device} row(s) added, 1 replaced" in out
    assert "0.9 -> 0.5" in out  # the identical key: the later source wins, reported
    summary = summarize(noise)
    assert set(summary["device"]) == {"cpu", "cuda"}
    means = summary.loc[(summary["norm"] == "groupnorm") & (summary["severity"] == 0.5)
                        & (summary["metric"] == "accuracy")].set_index("device")["value_mean"]
    assert means["cuda"] - means["cpu"] == pytest.approx(0.05)  # never averaged across devices
    assert (into / "quick" / "noise_summary.csv").is_file()


def test_merge_rejects_a_folder_without_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["merge", str(tmp_path / "empty"), "--into", str(tmp_path / "into")]) == 2
    assert "holds no result CSV" in capsys.readouterr().err
    with pytest.raises(SweepError, match="is not a folder"):
        merge_results([tmp_path / "missing"], tmp_path / "into")
