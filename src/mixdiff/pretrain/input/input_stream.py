"""The training batch's device work on a CUDA stream of its own, beside the training step.

Lightning moves a batch to the device just before its step, on the stream the step runs on: the
batch's copy, decoding, crops and photometric ops would queue behind the previous step's backward
pass and optimiser update, and the GPU would do one after the other. Queued on a side stream
instead, they run while that step is still on the GPU (the CPU queues work ahead of the GPU), and
the step that needs them waits on an event, not on the whole device. What the side stream makes and
the step's stream reads is marked with `record_stream`: the caching allocator then keeps its memory
until the step that reads it is done. (timm's PrefetchLoader and NVIDIA's Apex examples overlap
their input copies the same way.)

The work on the side stream must not make the host wait for the device either, or the CPU could
not queue the next step while the GPU is busy: small CPU tensors (crop boxes, the rows an op
applies to, normalisation constants) go over with `to_device`, from pinned memory.
"""

from __future__ import annotations

from functools import cache
from typing import Callable, TypeVar

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

T = TypeVar("T")


@cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def beside_the_step(device: torch.device, work: Callable[[], T]) -> T:
    """Run `work` (which queues work on `device` and returns tensors there) on `device`'s side
    stream; whatever the current stream queues next waits for that work. Elsewhere than on CUDA,
    just `work()`."""
    if device.type != "cuda":
        return work()
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                          else device.index)
    stream, step_stream = _side_stream(device), torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):
        result = work()
    step_stream.wait_stream(stream)
    apply_to_collection(result, Tensor, lambda t: t.record_stream(step_stream) if t.is_cuda
                        else None)
    return result


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on `device`, without the host waiting for the device: a copy to a CUDA device
    from pinned memory is asynchronous (one from ordinary memory may wait for the stream)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
