"""Model skeletons: modules built on the meta device (no memory, no work) for the adapters to assign weights to.

Built plainly under ``torch.device("meta")``, every ``nn.Embedding`` still runs its weight initialisation, and
``normal_`` on a meta tensor goes through torch's Python reference ops, which import torch._dynamo (over a second
of CPU at every ``jrt_prompt.load``). The weights are replaced anyway, so ``skip_init`` turns the initial fills into
no-ops instead. It is a torch-function mode, so it acts on this thread only and only while a skeleton is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods that fill a tensor in place with random numbers; nn.init's functions end in them.
RANDOM_FILLS = frozenset({"normal_", "uniform_", "log_normal_", "exponential_", "cauchy_", "geometric_", "random_",
                          "bernoulli_"})
M = TypeVar("M", bound=torch.nn.Module)


class _NoInitialFills(TorchFunctionMode):
    """Returns the tensor untouched for ``torch.nn.init.*`` and the random in-place fills; runs everything else."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", None) in RANDOM_FILLS:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextmanager
def skip_init() -> Iterator[None]:
    """Build modules on the meta device, their weight initialisation skipped (they get their weights later)."""
    with torch.device("meta"), _NoInitialFills():
        yield


def skeleton(build: Callable[..., M], *args, **kwargs) -> M:
    """``build(*args, **kwargs)`` on the meta device with initialisation skipped."""
    with skip_init():
        return build(*args, **kwargs)
