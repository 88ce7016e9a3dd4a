"""The process group of a data-parallel trainer (torch.distributed), and the few
collectives the training code needs, none of which pickles.

torchrun (or a Kubeflow PyTorchJob) starts one process per rank with
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; the group
is joined through ``env://`` (or ``tcp://`` at ``--dist-master-addr``). gloo
runs the collectives on CPU tensors; with NCCL they are copied to this rank's
GPU (``LOCAL_RANK``) and back, so the training code is the same either way.

torch's object collectives (``broadcast_object_list`` and friends) pickle;
this project never unpickles, so strings and small records travel as UTF-8
JSON in uint8 tensors, and tensors as tensors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


class RanksFailedTogether(RuntimeError):
    """Raised on every rank at the same point (see :meth:`DataParallel.all_ok`): the
    collectives stay in step, so the ranks can carry on with the next piece of work."""


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when it is not set)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


@dataclass
class DataParallel:
    """This rank's place in the group; rank 0 is the main rank."""

    rank: int
    world_size: int
    device: torch.device  # where collectives run: cpu (gloo) or this rank's GPU (nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, backend: str = "auto", timeout_s: float = 3600.0, master_addr: str = "") -> DataParallel:
        """Join the process group torchrun describes in the environment; ``master_addr``,
        when given, replaces MASTER_ADDR (the port, rank and world size stay the environment's)."""
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            if master_addr:
                # tcp:// takes rank and world size as arguments; env:// would read MASTER_ADDR.
                init_method = f"tcp://{master_addr}:{os.environ['MASTER_PORT']}"
                rank, world_size = int(os.environ["RANK"]), world_size_from_env()
                dist.init_process_group(
                    backend, init_method=init_method, timeout=timeout, world_size=world_size, rank=rank
                )
            else:
                dist.init_process_group(backend, init_method="env://", timeout=timeout)
        group = cls(dist.get_rank(), dist.get_world_size(), device)
        log.info("joined the process group", extra={"rank": group.rank, "world_size": group.world_size})
        return group

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # --- splitting work ---------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one;
        ranks in order, so concatenating the parts in rank order gives the whole)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    # --- tensors ----------------------------------------------------------------------
    def broadcast_(self, tensor: Tensor) -> Tensor:
        """Overwrite ``tensor`` with rank 0's (same shape and dtype on every rank)."""
        moved = tensor.to(self.device)
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def all_reduce_sum_(self, tensor: Tensor) -> Tensor:
        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def main_says(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. "stop now": every rank stops at the same step)."""
        return bool(float(self.broadcast_(torch.tensor([1.0 if flag else 0.0]))))

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` is True on every rank: ranks agree on failing together."""
        failed = torch.tensor([0.0 if ok else 1.0])
        return float(self.all_reduce_sum_(failed)) == 0.0

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (one flat all-reduce per dtype).
        A parameter without a gradient on some rank counts as zeros there; one without a
        gradient on every rank keeps none (so the optimizer skips it, as one process would)."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in parameters:
            if p.requires_grad:
                by_dtype.setdefault(p.dtype, []).append(p)
        for params in by_dtype.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype)
            flat = torch.cat([*(g.reshape(-1) for g in grads), has_grad])
            self.all_reduce_sum_(flat)
            offset = 0
            for p, anywhere in zip(params, flat[-len(params) :].tolist()):
                n = p.numel()
                p.grad = (flat[offset : offset + n] / self.world_size).view_as(p).clone() if anywhere else None
                offset += n

    def all_gather_rows(self, tensor: Tensor, pad_value: float = 0, left: bool = False) -> Tensor:
        """Every rank's rows (dim 0), in rank order. Ranks may hold different numbers of
        rows and, for 2-D tensors, different widths: rows are padded with ``pad_value``
        to the widest (on the left with ``left``, as prompts are)."""
        if tensor.dim() not in (1, 2):
            raise ValueError(f"all_gather_rows takes 1-D or 2-D tensors, got {tuple(tensor.shape)}")
        as_bool = tensor.dtype == torch.bool
        local = tensor.to(torch.uint8) if as_bool else tensor
        width = local.shape[1] if local.dim() == 2 else 1
        sizes = torch.tensor([local.shape[0], width], dtype=torch.long)
        gathered_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        self._all_gather(gathered_sizes, sizes)
        rows = [int(s[0]) for s in gathered_sizes]
        widest = max(int(s[1]) for s in gathered_sizes)
        padded = _pad_rows(local, max(rows), widest, pad_value, left)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._all_gather(parts, padded)
        out = torch.cat([part[:n] for part, n in zip(parts, rows)])
        return out.bool() if as_bool else out

    def _all_gather(self, out: list[Tensor], tensor: Tensor) -> None:
        moved = [t.to(self.device) for t in out]
        dist.all_gather(moved, tensor.to(self.device))
        for target, value in zip(out, moved):
            if target is not value:
                target.copy_(value)

    # --- JSON -----------------------------------------------------------------------
    def broadcast_json(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (other ranks pass nothing)."""
        data = _encode(value) if self.is_main else torch.zeros(0, dtype=torch.uint8)
        length = self.broadcast_(torch.tensor([data.numel()], dtype=torch.long))
        if not self.is_main:
            data = torch.zeros(int(length), dtype=torch.uint8)
        return _decode(self.broadcast_(data))

    def all_gather_json(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        data = _encode(value)
        gathered = self.all_gather_rows(data)
        lengths = self.all_gather_rows(torch.tensor([data.numel()], dtype=torch.long))
        out, offset = [], 0
        for n in lengths.tolist():
            out.append(_decode(gathered[offset : offset + n]))
            offset += n
        return out

    # --- modules ------------------------------------------------------------------------
    def broadcast_module_(self, module: nn.Module) -> None:
        """Every parameter and buffer of ``module`` from rank 0 (same architecture everywhere)."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                self.broadcast_(tensor.data)


def _encode(value: Any) -> Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)


def _decode(data: Tensor) -> Any:
    return json.loads(data.cpu().numpy().tobytes().decode())


def _pad_rows(tensor: Tensor, rows: int, width: int, pad_value: float, left: bool) -> Tensor:
    shape = (rows, width) if tensor.dim() == 2 else (rows,)
    out = torch.full(shape, pad_value, dtype=tensor.dtype)
    if tensor.dim() == 2:
        columns = slice(width - tensor.shape[1], width) if left else slice(0, tensor.shape[1])
        out[: tensor.shape[0], columns] = tensor
    else:
        out[: tensor.shape[0]] = tensor
    return out


def exit_rank(exit_code: int, group: DataParallel | None = None) -> NoReturn:
    """End this rank's process: destroy ``group`` when given (every rank reached the same
    end, so the teardown has peers to say goodbye to; pass None when a peer is gone),
    flush logs and stdio, and leave with ``os._exit(exit_code)``.

    Workaround: after the collectives are done, the process can still abort at
    interpreter exit ("terminate called without an active exception", exit -6
    instead of ``exit_code``) while C++ state of gloo is torn down, with no
    Python frame left: seen with torch 2.13 in 2 of 20 runs of two two-rank
    tests with a busy core, after ``destroy_process_group`` too, and when a peer
    was lost during the teardown itself. ``os._exit`` skips that teardown;
    nothing of this project's needs it (services have closed their clients by
    now). Can go when two-rank runs under load exit cleanly without it
    (tests/integration/test_distributed_training.py, 40 runs)."""
    if group is not None:
        group.close()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
