"""How a sweep places its workers on this machine, and what it refuses before starting any.

- **CPU only** (or ``train.accelerator=cpu``): N workers of ``train.threads`` threads each;
  the default is one worker per ``train.threads`` cores.
- **CUDA GPUs visible**: every worker is pinned to its own GPU(s) through
  ``CUDA_VISIBLE_DEVICES``, so a worker's ``cuda:0`` is its GPU. A trial uses
  ``train.devices`` GPUs, so the GPUs form ``gpus // train.devices`` slots, and
  ``train.trials_per_gpu`` workers share a slot (small trials leave a GPU idle). The default is
  every slot filled: one worker per GPU with the defaults. ``--workers`` may ask for fewer
  (the first slots are used) but not for more than the slots hold: two trials on one GPU that
  were not asked for would slow both and could run it out of memory.

Before any process starts, :func:`check_sweep` also refuses what no trial of the sweep could
run here (devices, threads, memory: :func:`lab.train.machine.check_machine`, with the workers
that share the machine's or a GPU's memory counted).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

from lab.errors import LabError
from lab.study.attrs import PROVENANCE_ATTR, RUNTIME_ATTR


@dataclass(frozen=True)
class WorkerPlan:
    """The workers of a sweep: how many, and the environment each one starts with."""

    n: int
    threads: int
    gpus: tuple[str, ...]  # the GPU ids of the machine as this process sees them (none: CPU)
    devices: int  # GPUs per trial
    trials_per_gpu: int

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def slots(self) -> int:
        return len(self.gpus) // self.devices if self.on_gpu else 0

    def env(self, worker: int) -> dict[str, str]:
        """Extra environment of worker `worker` (0-based): its CUDA_VISIBLE_DEVICES."""
        if not self.on_gpu:
            return {}
        slot = worker % self.slots
        ids = self.gpus[slot * self.devices:(slot + 1) * self.devices]
        return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}

    def describe(self) -> str:
        if not self.on_gpu:
            return f"{self.n} worker(s) x {self.threads} thread(s)"
        per = f"{self.devices} GPUs" if self.devices > 1 else "1 GPU"
        share = f", {self.trials_per_gpu} per GPU" if self.trials_per_gpu > 1 else ""
        return (f"{self.n} worker(s) x {self.threads} thread(s), {per} each{share} "
                f"(GPUs {','.join(self.gpus)})")


def visible_gpus() -> tuple[str, ...]:
    """The ids of the visible GPUs, as a child process must name them in
    CUDA_VISIBLE_DEVICES: the parent's own list when it has one, else 0..n-1."""
    from lab.train.machine import cuda_count

    n = cuda_count()
    if n == 0:
        return ()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [g.strip() for g in given.split(",") if g.strip()]
        if len(ids) >= n:
            return tuple(ids[:n])
    return tuple(str(i) for i in range(n))


def check_workers(value, source: str) -> int | None:
    """A worker count given on the command line or in an ablation: None (the default) or a
    positive integer; anything else is a LabError naming where it came from."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabError(f"{source}: the number of worker processes must be a positive integer "
                       f"(1, 2, ...), got {value!r}"
                       "; leave it out for the default (one per GPU, or one per "
                       "train.threads cores on a CPU).")
    return value


def plan_workers(cfg, requested: int | None, file_workers: int | None = None) -> WorkerPlan:
    """The sweep's workers on this machine for trials of config `cfg` (its trainer keys):
    `requested` (--workers / workers=), else the ablation file's `workers`, else the
    machine's default. Refuses more workers than the GPUs hold."""
    from lab.train.machine import check_devices, cores, uses_cuda

    t = cfg.train
    check_devices(t)  # a trial this machine cannot place at all
    n = requested or file_workers
    if not uses_cuda(t):
        default = max(1, cores() // t.threads)
        return WorkerPlan(n or default, t.threads, (), t.devices, t.trials_per_gpu)
    gpus = visible_gpus()
    slots = len(gpus) // t.devices
    capacity = slots * t.trials_per_gpu
    if n is not None and n > capacity:
        how = "--workers" if requested else "the ablation's workers"
        raise LabError(
            f"{how} {n}: this machine has {len(gpus)} GPU(s) (CUDA_VISIBLE_DEVICES "
            f"{','.join(gpus)}), room for {capacity} trial(s) at once with train.devices="
            f"{t.devices} and train.trials_per_gpu={t.trials_per_gpu}. Use --workers "
            f"{capacity} or fewer, or pack more trials on each GPU with "
            f"train.trials_per_gpu={-(-n // max(slots, 1))} if they fit its memory.")
    return WorkerPlan(n or capacity, t.threads, gpus, t.devices, t.trials_per_gpu)


def default_workers(abl, requested: int | None, threads: int = 1) -> int:
    """Workers asked for, else the ablation's, else the machine's default for `threads`
    threads per worker (one per `threads` cores on a CPU, one per GPU slot on a GPU)."""
    cfg = abl.config()
    return plan_workers(replace(cfg, train=replace(cfg.train, threads=threads)), requested,
                        abl.workers).n


def check_sweep(abl, workers: WorkerPlan) -> None:
    """Refuse, before the study or any worker exists, a sweep whose trials this machine
    cannot run: every setting's devices, threads and memory estimate, the last with the
    runs that share memory counted (all workers on a CPU; trials_per_gpu on a GPU)."""
    from lab.model import resolve
    from lab.tasks import build_task
    from lab.train.machine import check_devices, check_memory

    tasks: dict[str, object] = {}  # settings of one task share it (the text task reads a corpus)
    share = workers.trials_per_gpu if workers.on_gpu else workers.n
    for setting, cfg in abl.setting_configs():
        key = json.dumps(cfg.task, sort_keys=True, default=str)
        try:
            check_devices(cfg.train)
            if key not in tasks:
                tasks[key] = build_task(cfg.task)
            cfg, task, plan = resolve(cfg, tasks[key])
            check_memory(cfg, task, plan, concurrent=share)
        except LabError as e:
            raise LabError(f"ablation '{abl.path}', setting '{setting.label}': {e}") from None


def machine_runtime(cfg) -> dict[str, str]:
    """How this machine runs the trials of config `cfg`: device type and precision."""
    from lab.train.machine import resolve_precision, train_device

    return {"device": train_device(cfg).type, "precision": resolve_precision(cfg.train)}


def check_runtime(study, cfg) -> None:
    """A study records how its trials run (device type and the precision actually used,
    which `train.precision=auto` leaves to the machine); a machine that would run them
    otherwise (a CPU resuming a GPU study, a GPU without native bf16) is refused, so that no
    study mixes fp32 CPU and bf16 GPU trials unnoticed. A study made before this was recorded
    ran where its provenance says (a CPU, in fp32, unless it names a GPU)."""
    now = machine_runtime(cfg)
    stored = study.user_attrs.get(RUNTIME_ATTR)
    if stored is None:
        made_on_gpu = bool((study.user_attrs.get(PROVENANCE_ATTR) or {}).get("device", {}).get("gpu"))
        if study.get_trials(deepcopy=False) and made_on_gpu != (now["device"] == "cuda"):
            stored = {"device": "cuda" if made_on_gpu else "cpu"}
        else:
            study.set_user_attr(RUNTIME_ATTR, now)
            return
    differ = [k for k in ("device", "precision") if k in stored and stored[k] != now[k]]
    if differ:
        k = differ[0]
        raise LabError(
            f"study '{study.study_name}' runs its trials with {k} {stored[k]}, and this machine "
            f"would run them with {now[k]} ({', '.join(f'{a} {b}' for a, b in now.items())}); "
            "one study must not mix them. Run it where it was made, or start a new study here "
            "(study=<new-name>), or set train.accelerator / train.precision explicitly.")
