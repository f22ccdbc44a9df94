"""Sweeps: train every model a profile needs as submitit jobs (local subprocesses or a SLURM job array),
evaluate them from the checkpoint cache, and merge result folders from many machines.

Data path. The submitting machine plans (:func:`plan_sweep`): every (scenario, norm, parameter value, seed)
model of the scenario library (:mod:`robustbench_norm.scenarios`) becomes a :class:`SweepJob` holding only
plain values (profile, scenario, norm, value, seed, session options and the cache key), so it pickles.
The jobs whose checkpoint is missing from the cache are submitted with submitit (``AutoExecutor.map_array``:
``local`` runs each job in its own subprocess, in waves of ``array_parallelism``; ``slurm`` submits one job
array whose ``array_parallelism`` SLURM enforces). The worker (:func:`train_job`) rebuilds the session from
the plain values, plans the scenario again, finds the job by its key (a different key means the worker's
data or code differ from the submitter's: the job fails saying so) and trains it through
:meth:`Session.model <robustbench_norm.scenarios.session.Session.model>` into the shared cache.

Faults. A spec is trained once even when sweeps or xdist workers race for it: the cache trains a key under
an ``flock`` and looks again once it holds it (:mod:`robustbench_norm.training.cache`), so a job that waited
reports ``loaded``. A killed job leaves no checkpoint (writes are atomic) and is listed as failed with its
log; rerunning the sweep submits only what is still missing. A job whose training diverges is ``diverged``
with the trainer's message; the sweep goes on. Every job's outcome is printed and written to
``<log folder>/report.json``. Nothing is submitted when the options are bad, when the ``slurm`` executor
has no SLURM commands on ``PATH`` or when the cache folder is not writable.

Evaluation (``--evaluate``) never trains: it runs each (scenario, norm) whose models are all cached and
records the rows, like ``pytest suites/``, which with a full cache trains nothing either. CUDA-trained
checkpoints are keyed by their device type, so they are evaluated on a GPU node.

Results from many machines: device and recipe are part of every row's key
(:data:`robustbench_norm.results.rows.KEY_FIELDS`), so :func:`merge_results` keeps a GPU run's rows beside
the CPU rows, and summaries (grouped by the key without the seed) never average across devices.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import torch

from robustbench_norm.atomic import atomic_write
from robustbench_norm.profiles import DataSpec, PROFILES
from robustbench_norm.scenarios import available, get_scenario, record, run_scenario
from robustbench_norm.scenarios import SCENARIOS as SCENARIO_SPECS
from robustbench_norm.scenarios import batch_size
from robustbench_norm.scenarios.session import Session, TrainJob
from robustbench_norm.training import TrainingDiverged, resolve_device
from robustbench_norm.training.cache import CheckpointCache
from robustbench_norm.training.trainer import DEVICES

EXECUTORS: tuple[str, ...] = ("local", "slurm")
SLURM_COMMANDS: tuple[str, ...] = ("sbatch", "srun", "sacct")  # submit, run inside the job, poll the state
JOB_NAME = "robustbench-norm"
REPORT_NAME = "report.json"
FAILED_EXIT = 1  # the sweep ran, some job failed or diverged
SUPERVISED, ADAMATCH = "supervised", "adamatch"


class SweepError(ValueError):
    """A sweep that cannot start (bad option or config file, no SLURM, bad merge folder): nothing submitted."""


# -- options --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionOptions:
    """The session options of every job of a sweep, as plain values (they travel to the workers).

    ``device`` is the device *type* the models train on (``cpu`` or ``cuda``): it is part of every cache key,
    so the submitter plans with the workers' device even where it has none itself. ``norm_kwargs`` is a JSON
    object; ``threads`` the torch threads of a worker (one, like the suite, by default).
    """

    profile: str = "quick"
    device: str = "cpu"
    seeds: int = 3
    epochs: int | None = None
    norm_kwargs: str = "{}"
    data_dir: str | None = None
    cache_dir: str | None = None
    threads: int = 1

    def session(self, *, seeds: int | None = None) -> Session:
        """A session on this machine's ``device`` (CUDA must be there for ``cuda``)."""
        return Session.create(self.profile, device=self.device, seeds=self.seeds if seeds is None else seeds,
                              cache_dir=self.cache_dir, norm_kwargs=json.loads(self.norm_kwargs),
                              epochs=self.epochs, data_dir=self.data_dir)

    def planning_session(self) -> Session:
        """A session that names ``device`` in its cache keys without needing it here; it must never train."""
        session = replace(self, device="cpu").session()
        return replace(session, device=torch.device(self.device))

    @property
    def cache(self) -> CheckpointCache:
        return CheckpointCache(Path(self.cache_dir) if self.cache_dir else None)


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of each job (SLURM) and how many run at once; every field also a config-file key.

    ``gpus_per_job`` None: 1 when the models train on CUDA, else 0. ``array_parallelism`` None: SLURM gets
    submitit's default (256), the local executor runs ``cpu_count // cpus_per_job`` jobs at once.
    ``time_min`` is each job's time limit (the local executor kills a job past it too).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int | None = None
    cpus_per_job: int = 1
    mem_gb: float | None = None
    time_min: int = 240
    array_parallelism: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("time_min", 1), ("array_parallelism", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise SweepError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or not self.mem_gb > 0):
            raise SweepError(f"mem_gb must be a number > 0, got {self.mem_gb!r}")
        for name in ("partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise SweepError(f"{name} must be a non-empty string, got {value!r}")


CLUSTER_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ClusterOptions))


def read_cluster_config(path: Path | str) -> dict[str, Any]:
    """The cluster options of a ``.json`` or ``.toml`` file (a flat table of :data:`CLUSTER_KEYS`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SweepError(f"cluster config {path}: cannot read it ({type(error).__name__}: {error})") from None
    try:
        if path.suffix == ".json":
            config = json.loads(text)
        elif path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            config = tomllib.loads(text)
        else:
            raise SweepError(f"cluster config {path}: the name must end in .json or .toml")
    except (ValueError, ImportError) as error:
        if isinstance(error, SweepError):
            raise
        raise SweepError(f"cluster config {path}: not valid {path.suffix[1:].upper()} ({error})") from None
    if not isinstance(config, dict):
        raise SweepError(f"cluster config {path}: expected a table of keys {list(CLUSTER_KEYS)}")
    unknown = sorted(set(config) - set(CLUSTER_KEYS))
    if unknown:
        raise SweepError(f"cluster config {path}: unknown key(s) {unknown}; valid keys: {list(CLUSTER_KEYS)}")
    return config


def cluster_options(config_file: Path | str | None, overrides: dict[str, Any]) -> ClusterOptions:
    """The config file's options (if any) with the command line's non-None ``overrides`` on top."""
    values = read_cluster_config(config_file) if config_file else {}
    values.update({name: value for name, value in overrides.items() if value is not None})
    return ClusterOptions(**values)


def check_executor(executor: str, *, submitting: bool = True) -> None:
    """``SweepError`` for an unknown executor, or (``submitting``) ``slurm`` on a machine without SLURM's
    commands; a dry run or an evaluation submits nothing and may name ``slurm`` anywhere."""
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; valid executors: {EXECUTORS}")
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if executor == "slurm" and submitting and missing:
        raise SweepError(f"executor 'slurm' needs SLURM's commands {', '.join(SLURM_COMMANDS)} on PATH; not found "
                         f"here: {', '.join(missing)}. Run the sweep on the cluster's login node, or use "
                         "--executor local. Nothing was submitted.")


def training_device(device: str, executor: str, gpus_per_job: int | None) -> str:
    """The device type the jobs train on: ``auto`` is CUDA on SLURM (unless 0 GPUs), else this machine's."""
    if device not in DEVICES:
        raise SweepError(f"unknown device {device!r}; valid devices: {DEVICES}")
    if device == "auto":
        if executor == "slurm":
            return "cpu" if gpus_per_job == 0 else "cuda"
        return resolve_device("auto").type
    if device == "cuda" and gpus_per_job == 0:
        raise SweepError("device 'cuda' needs --gpus-per-job >= 1 (got 0)")
    if executor == "local":
        resolve_device(device)  # CUDA must be here for local jobs
    return device


# -- planning -------------------------------------------------------------------------------------------------

class Workload(NamedTuple):
    """What training throughput depends on (besides the norm): device type, net, trainer, batch, input shape."""

    device: str
    arch: str
    kind: str  # SUPERVISED or ADAMATCH
    batch_size: int
    channels: int
    image_size: int


@dataclass(frozen=True)
class Work:
    """A job's training work: its :class:`Workload` and the training images it passes through the net."""

    workload: Workload
    images: int


@dataclass(frozen=True)
class SweepJob:
    """One model to train, as plain values. ``value`` is the scenario parameter value the worker plans with;
    ``value_label`` names every value sharing the model (the noise model serves every corruption)."""

    options: SessionOptions
    scenario: str
    norm: str
    value: Any
    value_label: str
    seed: int
    key: str
    work: Work | None  # None: a cache spec whose layout training_work does not know (no estimate)
    skip: str | None = None  # why the job is not trained (a batch size the norm cannot train at)

    def describe(self) -> str:
        return f"{self.scenario} {self.norm} {self.value_label} seed {self.seed} [{self.key[:12]}]"


def selected_scenarios(session: Session, requested: Sequence[str]) -> list[str]:
    """The requested scenarios (validated; each must exist in the profile), or every one the profile has."""
    if not requested:
        return [name for name in SCENARIO_SPECS if available(session, name)]
    for name in requested:
        get_scenario(name)
        if not available(session, name):
            raise SweepError(f"scenario {name!r} is not part of profile {session.profile.name!r}: "
                             f"{session.profile.notes.get(name, 'no settings')}")
    return list(dict.fromkeys(requested))


def plan_sweep(options: SessionOptions, scenarios: Sequence[str], norms: Sequence[str]) -> list[SweepJob]:
    """Every model of ``scenarios`` x ``norms`` x the profile's values x seeds, once each (nothing trained)."""
    session = options.planning_session()
    jobs: dict[str, SweepJob] = {}
    for scenario in selected_scenarios(session, scenarios):
        spec = get_scenario(scenario)
        values = spec.values(session)
        for norm in norms:
            planned: dict[str, tuple[TrainJob, list[Any]]] = {}
            for value in values:
                for task in spec.plan(session, norm, value):
                    planned.setdefault(session.cache.key(task.spec), (task, []))[1].append(value)
            for key, (task, used) in planned.items():
                jobs.setdefault(key, SweepJob(
                    options, scenario, norm, used[0], _value_label(spec.parameter, spec.value_id, used, values),
                    task.seed, key, training_work(session, task.spec), _skip_reason(session, scenario, task, used[0])))
    return list(jobs.values())


def _value_label(parameter: str | None, value_id: Any, used: list[Any], values: list[Any]) -> str:
    if parameter is None:
        return "-"
    if len(used) == len(values) > 1:
        return f"all {len(values)} {parameter} values"
    return ",".join(value_id(value) for value in used)


def _skip_reason(session: Session, scenario: str, task: TrainJob, value: Any) -> str | None:
    """Why ``task`` cannot train (the batch-size scenario's untrainable sizes: rows say so, nothing to train)."""
    if scenario != batch_size.NAME:
        return None
    image_shape = tuple(session.dataset(session.profile.batch_size.data).test.images.shape[1:])
    return batch_size.untrainable_reason(task, value, image_shape)


def training_work(session: Session, spec: dict[str, Any]) -> Work | None:
    """The :class:`Work` a cache spec describes: its net, trainer, batch, input shape and training images.

    Supervised: ``epochs * (N // B) * B`` for N training images (the parts of a mixture together, the source
    of domain shift) at batch B; AdaMatch: the same count of *source* images (each step also passes
    ``uratio`` times as many target images, which its measured throughput includes). None for a spec
    without ``arch``, a schedule (``train`` or ``schedule``) and its data (``data``, ``parts`` or ``source``).
    """
    schedule = spec.get("train", spec.get("schedule"))
    parts = spec.get("parts") or [spec.get("data", spec.get("source"))]
    if schedule is None or None in parts or "arch" not in spec:
        return None
    bundles = [session.dataset(DataSpec(**{k: v for k, v in part.items() if k != "fingerprint"})) for part in parts]
    kind = ADAMATCH if "source_batch_size" in schedule else SUPERVISED
    batch = schedule["source_batch_size" if kind == ADAMATCH else "batch_size"]
    count = sum(len(bundle.train.labels) for bundle in bundles)
    workload = Workload(spec["device"], spec["arch"], kind, batch, bundles[0].channels, bundles[0].image_size)
    return Work(workload, schedule["epochs"] * (count // batch) * batch)


def is_cached(job: SweepJob) -> bool:
    """Whether the job's checkpoint file exists (its validity is checked when it is loaded: a damaged one
    is retrained there, with a warning naming it)."""
    return job.options.cache.path(job.key).exists()


# -- estimate -------------------------------------------------------------------------------------------------

THROUGHPUT: dict[Workload, float] = {
    # CPU, the quick profile (v3): this project's 2-core development VM, one torch thread, torch 2.13.0 (CPU
    # build), 2026-11-27, load average 2.6-2.9 from other processes during the run (so rather lower bounds).
    Workload("cpu", "quick_cnn", ADAMATCH, 32, 1, 16): 1004,
    Workload("cpu", "quick_cnn", SUPERVISED, 2, 1, 16): 1768,
    Workload("cpu", "quick_cnn", SUPERVISED, 4, 1, 16): 3192,
    Workload("cpu", "quick_cnn", SUPERVISED, 16, 1, 16): 7904,
    Workload("cpu", "quick_cnn", SUPERVISED, 32, 1, 16): 10040,
    Workload("cpu", "quick_cnn", SUPERVISED, 64, 1, 16): 11272,
    Workload("cpu", "quick_cnn", SUPERVISED, 32, 3, 16): 9917,
    Workload("cpu", "quick_cnn", SUPERVISED, 32, 1, 28): 3880,
    Workload("cpu", "vit_tiny", ADAMATCH, 32, 1, 16): 220,
    Workload("cpu", "vit_tiny", SUPERVISED, 2, 1, 16): 484,
    Workload("cpu", "vit_tiny", SUPERVISED, 4, 1, 16): 950,
    Workload("cpu", "vit_tiny", SUPERVISED, 16, 1, 16): 2115,
    Workload("cpu", "vit_tiny", SUPERVISED, 32, 1, 16): 2352,
    Workload("cpu", "vit_tiny", SUPERVISED, 64, 1, 16): 1862,
    Workload("cpu", "vit_tiny", SUPERVISED, 32, 3, 16): 1746,
    Workload("cpu", "vit_tiny", SUPERVISED, 32, 1, 28): 641,
    # GPU, the paper profile: one NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, one torch thread, 2026-11-27. Input
    # shapes of the paper data (MNIST 1x28x28 for noise, RGB 3x32x32 elsewhere; day/night assumed 3x32x32: a
    # folder of another size has no entry). Not measured yet (the dry run lists their jobs as unmeasured):
    # vgg19 (noise_cifar10), resnet18_cifar (batch_size) and vit_cn (blend, superclass).
    Workload("cuda", "localnorm_mnist", SUPERVISED, 100, 1, 28): 13400,
    Workload("cuda", "vit_tiny", SUPERVISED, 100, 1, 28): 6605,
    Workload("cuda", "resnet20", SUPERVISED, 128, 3, 32): 6337,
    Workload("cuda", "vit_tiny", SUPERVISED, 256, 3, 32): 13201,
    Workload("cuda", "vit_tiny", SUPERVISED, 128, 3, 32): 7053,
    Workload("cuda", "vit_tiny", SUPERVISED, 64, 3, 32): 4121,  # a second measurement gave 3768
    Workload("cuda", "vit_tiny", SUPERVISED, 32, 3, 32): 2509,
    Workload("cuda", "vit_tiny", SUPERVISED, 16, 3, 32): 1685,
    Workload("cuda", "vit_tiny", SUPERVISED, 8, 3, 32): 668,
    Workload("cuda", "vit_tiny", SUPERVISED, 4, 3, 32): 337,
    Workload("cuda", "vit_tiny", SUPERVISED, 2, 3, 32): 159,
    Workload("cuda", "vit_tiny", ADAMATCH, 64, 3, 32): 1015,
    Workload("cuda", "wrn28_2", SUPERVISED, 64, 3, 32): 2587,
    Workload("cuda", "wrn28_2", ADAMATCH, 64, 3, 32): 606,
    Workload("cuda", "cifar_convnet", SUPERVISED, 256, 3, 32): 15071,
}
"""Training images per second of each :class:`Workload` (AdaMatch: source images), by :func:`measure_throughput`.

How: the suite's own training loop (``train_supervised``; ``train_adamatch`` with its default ``uratio`` 3,
augmentations included) with BatchNorm in the net, on random uint8 images of the workload's shape, timing
``max(50, 3000 // batch)`` steps after 10 warm-up steps; a step synchronises once (the trainer reads the loss),
so small batches are bound by per-step latency, not by the GPU's arithmetic. Other norms differ: on the H100,
resnet20 at batch 64 trained 4041 images/s with GroupNorm and 3108 with ContextNorm against 3513 with
BatchNorm. Estimates from this table are for planning (order of magnitude), not a promise. To add a
workload: ``measure_throughput(Workload(...))`` on the machine in question, one torch thread
(``torch.set_num_threads(1)``), and a line here saying where and when.
"""


@dataclass(frozen=True)
class Estimate:
    """Training hours of some jobs from :data:`THROUGHPUT`, per device type; jobs without a measurement."""

    hours: dict[str, float]
    unmeasured: list[SweepJob]


def estimate_hours(jobs: Sequence[SweepJob], table: dict[Workload, float] | None = None) -> Estimate:
    """Hours of training of ``jobs`` (skipped jobs excluded) at the measured throughput."""
    table = THROUGHPUT if table is None else table
    hours: dict[str, float] = {}
    unmeasured = []
    for job in jobs:
        if job.skip is not None:
            continue
        rate = None if job.work is None else table.get(job.work.workload)
        if rate is None:
            unmeasured.append(job)
            continue
        device = job.work.workload.device
        hours[device] = hours.get(device, 0.0) + job.work.images / rate / 3600.0
    return Estimate(hours, unmeasured)


def measure_throughput(workload: Workload, *, steps: int = 50, warmup: int = 10, norm: str = "batchnorm") -> float:
    """Training images per second of ``workload`` with ``norm`` on this machine (method: :data:`THROUGHPUT`)."""
    from robustbench_norm.data import ImageSet
    from robustbench_norm.models import build_model
    from robustbench_norm.norms import get_norm
    from robustbench_norm.training import AdaMatchConfig, TrainConfig, train_supervised
    from robustbench_norm.training.adamatch import train_adamatch

    device = torch.device(workload.device)
    shape = (workload.channels, workload.image_size, workload.image_size)
    model = build_model(workload.arch, num_classes=10, in_channels=workload.channels,
                        image_size=workload.image_size, norm=norm)

    def images(count: int) -> ImageSet:
        generator = torch.Generator().manual_seed(count)
        return ImageSet(torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator),
                        torch.randint(0, 10, (count,), generator=generator), "random")

    def train(count: int) -> None:
        data = images(count * workload.batch_size)
        if workload.kind == ADAMATCH:
            config = AdaMatchConfig(epochs=1, source_batch_size=workload.batch_size)
            target = images(count * workload.batch_size * config.uratio)
            ids = (0, 1) if get_norm(norm).needs_context else (None, None)
            train_adamatch(model, data, target, config, device=device, seed=0, source_context=ids[0],
                           target_context=ids[1], progress=False)
        else:
            config = TrainConfig(epochs=1, batch_size=workload.batch_size)
            train_supervised(model, data, config, device=device, seed=0, progress=False,
                             contexts=torch.zeros(len(data.labels), dtype=torch.long))
        if device.type == "cuda":
            torch.cuda.synchronize()

    train(warmup)
    start = time.perf_counter()
    train(steps)
    return steps * workload.batch_size / (time.perf_counter() - start)


# -- running the jobs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobReport:
    """What a worker returns: ``trained``, ``loaded`` (another process trained it meanwhile) or ``diverged``."""

    key: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    host: str = ""


@dataclass(frozen=True)
class JobOutcome:
    """A job's end as the sweep saw it: the worker's status, or ``failed`` (an error, or no result: killed)."""

    job: SweepJob
    status: str
    reason: str
    log: str
    seconds: float = 0.0
    host: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "diverged")

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.job.scenario, "norm": self.job.norm, "value": self.job.value_label,
                "seed": self.job.seed, "key": self.job.key, "status": self.status, "reason": self.reason,
                "log": self.log, "seconds": round(self.seconds, 3), "host": self.host}


def train_job(job: SweepJob) -> JobReport:
    """The worker: train ``job``'s model into the cache through ``Session.model`` (or load it if it is there)."""
    torch.set_num_threads(job.options.threads)
    start = time.perf_counter()
    session = job.options.session(seeds=job.seed + 1)
    planned = {session.cache.key(task.spec): task for task in get_scenario(job.scenario).plan(session, job.norm,
                                                                                              job.value)}
    if job.key not in planned:
        raise RuntimeError(f"{job.describe()}: this worker plans other cache keys for the job ({sorted(planned)}); "
                           "its data, code or device differ from the submitting machine's")
    task = planned[job.key]
    trained = []

    def train(model: torch.nn.Module) -> Any:
        print(f"{job.describe()}: training in process {os.getpid()} on {socket.gethostname()}", flush=True)
        trained.append(True)
        return task.train(model)

    try:
        session.model(replace(task, train=train))
    except TrainingDiverged as error:
        return JobReport(job.key, "diverged", str(error), time.perf_counter() - start, socket.gethostname())
    status = "trained" if trained else "loaded"
    print(f"{job.describe()}: {status}", flush=True)
    return JobReport(job.key, status, "", time.perf_counter() - start, socket.gethostname())


def make_executor(executor: str, cluster: ClusterOptions, device: str, folder: Path) -> Any:
    """A submitit ``AutoExecutor`` for ``executor`` writing job files and logs under ``folder/<job id>``."""
    import submitit

    gpus = cluster.gpus_per_job if cluster.gpus_per_job is not None else int(device == "cuda")
    made = submitit.AutoExecutor(folder=folder / "%j", cluster=executor)
    parameters: dict[str, Any] = {"name": JOB_NAME, "timeout_min": cluster.time_min,
                                  "cpus_per_task": cluster.cpus_per_job, "gpus_per_node": gpus,
                                  "mem_gb": cluster.mem_gb}
    if executor == "slurm":
        parameters.update(slurm_partition=cluster.partition, slurm_account=cluster.account, slurm_qos=cluster.qos,
                          slurm_array_parallelism=cluster.array_parallelism)
    made.update_parameters(**{name: value for name, value in parameters.items() if value is not None})
    return made


def waves(jobs: Sequence[SweepJob], executor: str, cluster: ClusterOptions) -> Iterator[list[SweepJob]]:
    """Groups submitted together: one SLURM array (SLURM runs ``array_parallelism`` at once), or local
    waves of ``array_parallelism`` (default: the CPU cores over ``cpus_per_job``)."""
    if executor == "slurm":
        yield list(jobs)
        return
    size = cluster.array_parallelism or max(1, (os.cpu_count() or 1) // cluster.cpus_per_job)
    for start in range(0, len(jobs), size):
        yield list(jobs[start:start + size])


def collect(job: SweepJob, handle: Any) -> JobOutcome:
    """Wait for a submitted job; its :class:`JobOutcome` (an error or a missing result is ``failed``)."""
    log = str(handle.paths.stderr)
    error = handle.exception()
    if error is None:
        report: JobReport = handle.result()
        return JobOutcome(job, report.status, report.reason, log, report.seconds, report.host)
    return JobOutcome(job, "failed", failure_reason(str(error), handle.state), log)


def failure_reason(message: str, state: str) -> str:
    """The exception line of a failed job's trace, or why a job left no result."""
    if "has not produced any output" in message:
        return f"no result: the job ended without one (killed, out of memory or past its time limit; state {state})"
    trace = message.split("-" * 22)
    lines = [line.strip() for line in (trace[1] if len(trace) > 2 else message).splitlines() if line.strip()]
    return lines[-1] if lines else message.strip()


def run_jobs(executor: Any, batches: Iterator[list[SweepJob]], *, wait: bool = True,
             echo: Any = print) -> list[JobOutcome]:
    """Submit each batch with ``map_array`` and (``wait``) collect its outcomes before the next batch."""
    outcomes = []
    for batch in batches:
        handles = executor.map_array(train_job, batch)
        echo(f"submitted {len(batch)} job(s): {', '.join(handle.job_id for handle in handles)}")
        if not wait:
            outcomes += [JobOutcome(job, "submitted", "", str(handle.paths.stderr))
                         for job, handle in zip(batch, handles)]
            continue
        for job, handle in zip(batch, handles):
            outcome = collect(job, handle)
            outcomes.append(outcome)
            detail = f": {outcome.reason}; log: {outcome.log}" if outcome.failed else f" ({outcome.seconds:.1f} s)"
            echo(f"{outcome.status:>9} {job.describe()}{detail}")
    return outcomes


def write_report(folder: Path, header: dict[str, Any], outcomes: Sequence[JobOutcome],
                 skipped: Sequence[SweepJob]) -> Path:
    """``<folder>/report.json``: the sweep's settings, every job's outcome and the skipped jobs."""
    path = folder / REPORT_NAME
    body = {**header, "jobs": [outcome.as_dict() for outcome in outcomes],
            "skipped": [{"key": job.key, "job": job.describe(), "reason": job.skip} for job in skipped]}
    atomic_write(path, lambda handle: json.dump(body, handle, indent=1, sort_keys=True))
    return path


# -- evaluation -----------------------------------------------------------------------------------------------

def evaluate_sweep(options: SessionOptions, jobs: Sequence[SweepJob], results_dir: Path,
                   echo: Any = print) -> list[tuple[str, str]]:
    """Score every (scenario, norm) of ``jobs`` whose models are all cached into ``results_dir`` (never
    training); returns the (scenario, norm) pairs not evaluated because a model is missing."""
    from robustbench_norm.results import ResultStore, summarize_results_dir

    pairs = list(dict.fromkeys((job.scenario, job.norm) for job in jobs))
    missing = {(job.scenario, job.norm) for job in jobs if job.skip is None and not is_cached(job)}
    session = options.session()
    store = ResultStore(results_dir)
    for scenario, norm in pairs:
        if (scenario, norm) in missing:
            echo(f"not evaluated: {scenario} {norm}: model(s) missing from the cache (run the sweep first)")
            continue
        outcome = run_scenario(session, scenario, norm)
        record(outcome, store, session.profile.name, scenario)
        session.release(norm)
        echo(f"evaluated {scenario} {norm}: {len(outcome.rows)} rows")
    summarize_results_dir(results_dir, session.profile.name)
    return [pair for pair in pairs if pair in missing]


# -- results from many machines -------------------------------------------------------------------------------

@dataclass
class MergeReport:
    """Rows merged per table: added (a new key), replaced (a key already there; the later source wins)."""

    added: dict[tuple[str, str], int] = field(default_factory=dict)
    replaced: dict[tuple[str, str], int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # replaced keys whose value differed


def merge_results(sources: Sequence[Path | str], into: Path | str) -> MergeReport:
    """Merge the result rows of ``sources`` (in order) into ``into`` by key, and rewrite its summaries.

    Rows of another device or recipe have another key and are kept beside each other; a row whose key is
    already in ``into`` (or in an earlier source) is replaced by the later one, and counted (with the old
    and new value when they differ). Confusion matrices and images are not merged (their file names do not
    carry the device): they stay in each run's folder.
    """
    from robustbench_norm.results import KEY_FIELDS, ResultStore, summarize_results_dir
    from robustbench_norm.results.rows import frame_to_rows

    stores = []
    for source in map(Path, sources):
        if not source.is_dir():
            raise SweepError(f"merge: {source} is not a folder")
        store = ResultStore(source)
        if not store.tables():
            raise SweepError(f"merge: {source} holds no result CSV (<profile>/<scenario>.csv)")
        stores.append(store)
    target, report = ResultStore(into), MergeReport()
    for store in stores:
        for table in store.tables():
            new, old = store.read(*table), target.read(*table)
            joined = new.merge(old, on=list(KEY_FIELDS), how="inner", suffixes=("", "_old"))
            report.added[table] = report.added.get(table, 0) + len(new) - len(joined)
            report.replaced[table] = report.replaced.get(table, 0) + len(joined)
            differs = joined.loc[~((joined["value"] == joined["value_old"])
                                   | (joined["value"].isna() & joined["value_old"].isna()))]
            report.changed += [f"{store.root}: {table[1]} {row.norm} {row.eval_mode} {row.corruption} "
                               f"{row.severity:g} seed {row.seed} {row.metric} {row.device}: "
                               f"{row.value_old!r} -> {row.value!r}" for row in differs.itertuples()]
            target.write(frame_to_rows(new))
    for profile in sorted({profile for profile, _ in target.tables()}):
        summarize_results_dir(target.root, profile)
    return report


# -- command line ---------------------------------------------------------------------------------------------

def _listed(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip()))


def sweep_command(args: argparse.Namespace, echo: Any = print) -> int:
    """``robustbench-norm sweep``: 0 when every job ended well, 1 when some failed or diverged."""
    from robustbench_norm.norms import get_norm, list_norms

    check_executor(args.executor, submitting=not (args.dry_run or args.evaluate))
    overrides = {name: getattr(args, name, None) for name in CLUSTER_KEYS}
    cluster = cluster_options(args.config, overrides)
    if args.profile not in PROFILES:
        raise SweepError(f"unknown profile {args.profile!r}; valid profiles: {PROFILES}")
    device = training_device(args.device, args.executor, cluster.gpus_per_job)
    try:
        kwargs = json.loads(args.norm_kwargs)
    except json.JSONDecodeError as error:
        raise SweepError(f"--norm-kwargs is not valid JSON ({error}): {args.norm_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise SweepError(f"--norm-kwargs must be a JSON object, got {args.norm_kwargs!r}")
    options = SessionOptions(args.profile, device, args.seeds, args.epochs, json.dumps(kwargs, sort_keys=True),
                             args.data_dir, args.cache_dir, cluster.cpus_per_job)
    norms = [get_norm(name).name for name in _listed(args.norm)] or list_norms()
    jobs = plan_sweep(options, _listed(args.scenario), list(dict.fromkeys(norms)))
    if args.dry_run:
        print_plan(jobs, echo)
        return 0
    if args.evaluate:
        skipped = evaluate_sweep(options, jobs, Path(args.results_dir), echo)
        return FAILED_EXIT if skipped else 0
    return submit(options, jobs, args.executor, cluster, args, echo)


def submit(options: SessionOptions, jobs: Sequence[SweepJob], executor: str, cluster: ClusterOptions,
           args: argparse.Namespace, echo: Any) -> int:
    """Submit the missing jobs, wait for them (unless ``--no-wait``), print and record every outcome."""
    options.cache.check_writable()
    skipped = [job for job in jobs if job.skip is not None]
    missing = [job for job in jobs if job.skip is None and not is_cached(job)]
    echo(f"{len(jobs)} model(s) planned: {len(jobs) - len(missing) - len(skipped)} cached, {len(skipped)} not "
         f"trainable, {len(missing)} to train on {options.device} with the {executor} executor")
    if not missing:
        return 0
    root = Path(args.log_dir) if args.log_dir else options.cache.root / "sweeps"
    folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    made = make_executor(executor, cluster, options.device, folder)
    outcomes = run_jobs(made, waves(missing, executor, cluster), wait=not args.no_wait, echo=echo)
    header = {"profile": options.profile, "device": options.device, "executor": executor,
              "cluster": asdict(cluster), "cache": str(options.cache.root)}
    path = write_report(folder, header, outcomes, skipped)
    failed = [outcome for outcome in outcomes if outcome.failed]
    counts = {status: sum(o.status == status for o in outcomes) for status in dict.fromkeys(o.status for o in outcomes)}
    echo(f"{', '.join(f'{n} {status}' for status, n in counts.items())}; report: {path}")
    for outcome in failed:
        echo(f"FAILED {outcome.job.describe()}: {outcome.reason}\n       log: {outcome.log}")
    return FAILED_EXIT if failed else 0


def print_plan(jobs: Sequence[SweepJob], echo: Any = print) -> None:
    """The dry run: one line per job (scenario, norm, value, seed, key, cached) and the estimated hours."""
    rows = [(job.scenario, job.norm, job.value_label, str(job.seed), job.key[:16],
             f"n/a ({job.skip})" if job.skip else ("yes" if is_cached(job) else "no")) for job in jobs]
    header = ("scenario", "norm", "value", "seed", "key", "cached")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    missing = [job for job in jobs if job.skip is None and not is_cached(job)]
    echo(f"{len(jobs)} model(s): {len(missing)} to train, {sum(j.skip is not None for j in jobs)} not trainable")
    for label, chosen in (("to train", missing), ("all planned", jobs)):
        estimate = estimate_hours(chosen)
        hours = ", ".join(f"{value:.2f} {device} hours" for device, value in sorted(estimate.hours.items()))
        echo(f"estimated training time, {label}: {hours or 'nothing measured'}"
             + (f"; {len(estimate.unmeasured)} job(s) without a measured throughput "
                f"({', '.join(sorted({_workload_label(j.work) for j in estimate.unmeasured}))})"
                if estimate.unmeasured else ""))
    echo("(throughput of BatchNorm nets, robustbench_norm.sweep.THROUGHPUT; other norms differ)")


def _workload_label(work: Work | None) -> str:
    if work is None:
        return "training work unknown"
    workload = work.workload
    return (f"{workload.arch} {workload.kind} batch {workload.batch_size} "
            f"{workload.channels}x{workload.image_size}x{workload.image_size} on {workload.device}")


def merge_command(args: argparse.Namespace, echo: Any = print) -> int:
    """``robustbench-norm merge DIR... --into DIR``: merge and report what was added and replaced."""
    report = merge_results(args.sources, args.into)
    for (profile, scenario), added in sorted(report.added.items()):
        echo(f"{profile}/{scenario}: {added} row(s) added, {report.replaced[(profile, scenario)]} replaced")
    for line in report.changed:
        echo(f"replaced with another value (the later source wins): {line}")
    return 0


__all__ = ["EXECUTORS", "THROUGHPUT", "ClusterOptions", "Estimate", "JobOutcome", "JobReport", "MergeReport",
           "SessionOptions", "SweepError", "SweepJob", "Work", "Workload", "check_executor", "cluster_options",
           "estimate_hours", "evaluate_sweep", "measure_throughput", "merge_results", "plan_sweep",
           "read_cluster_config", "run_jobs", "sweep_command", "merge_command", "train_job", "training_device",
           "training_work"]
