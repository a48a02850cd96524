"""Where a measurement runs: the model's device, its clock and its number format.

Every post-training measurement (FLOPs, decode latency, KV bytes, peak memory, extrapolation,
adaptive exit, cost against context) runs on the device the model trained on, in the number
format it trained in: inputs are moved to the model's device, timings wait for the device
to finish (:func:`synchronize`; a CUDA kernel launch returns before the kernel has run), and
mixed-precision runs are measured under the same autocast (:func:`autocast`), so a bf16 run's
KV cache holds bf16 keys and values.
"""

from __future__ import annotations

import contextlib
import time

import torch


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished the work queued so far (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work: a time stamp that covers the kernels."""
    synchronize(device)
    return time.perf_counter()


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (None: full precision)."""
    if not precision:
        return None
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def autocast(device: torch.device, precision: str | None):
    """The autocast context a run of `precision` computes under on `device` (none for full
    precision, or on a device without autocast)."""
    dtype = autocast_dtype(precision)
    if dtype is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
