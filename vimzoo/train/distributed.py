"""Process-group set-up through `timm.utils.init_distributed_device`, with a timeout so a frozen rank cannot
hang the others, and the few collectives the run loop needs."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Iterator, List

import torch
import torch.distributed as dist

__all__ = ['DistContext', 'init_distributed', 'is_timeout_error']


@dataclass
class DistContext:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False
    timeout_s: float = 600.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def _process_group_timeout(seconds: float) -> Iterator[None]:
    # reason: timm's init_distributed_device() calls init_process_group() without a timeout argument
    original = dist.init_process_group
    dist.init_process_group = partial(original, timeout=timedelta(seconds=seconds))
    try:
        yield
    finally:
        dist.init_process_group = original


def init_distributed(args: argparse.Namespace) -> DistContext:
    """Resolve --device (auto -> cuda if available) and join the torchrun process group, if any."""
    from timm.utils import init_distributed_device
    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('tools/train.py: error: --device cuda requested but no CUDA device is available.')
    ns = argparse.Namespace(device=device, dist_backend=args.dist_backend)
    with _process_group_timeout(args.dist_timeout):
        resolved = init_distributed_device(ns)
    if resolved.type == 'cuda' and resolved.index is None:
        resolved = torch.device('cuda', torch.cuda.current_device())
    return DistContext(device=resolved, rank=ns.rank, local_rank=ns.local_rank, world_size=ns.world_size,
                       distributed=ns.distributed, timeout_s=args.dist_timeout)


def is_timeout_error(exc: BaseException) -> bool:
    """A collective that gave up waiting for another rank (gloo/nccl word it differently)."""
    if isinstance(exc, getattr(dist, 'DistNetworkError', ())) or isinstance(exc, TimeoutError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in ('timed out', 'timeout', 'connection reset',
                                                                     'connection closed', 'broken pipe'))
