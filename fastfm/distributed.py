"""Everything distributed lives here: torchrun initialisation, the DDP wrap, reductions.

Launch with ``torchrun --nproc_per_node=N scripts/train.py ...``; without torchrun the same code
runs as a world of one, with no process group.  Backends: NCCL on CUDA (one GPU per process, chosen
by ``LOCAL_RANK``), gloo on CPU.

SyncBatchNorm on CUDA only: torch's has no CPU implementation, so CPU runs keep per-rank BatchNorm
statistics (each rank normalises with its own batch, as plain DDP does), which is why CPU
multi-process runs are for testing only.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        """Rank 0: the only rank that prints, writes files and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise ``torch.device(name)`` after a check."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


class DeviceError(ValueError):
    """A device name that is not valid, or a device this machine does not have."""


class RankFailure(RuntimeError):
    """A collective failed because another rank is stuck (timeout) or gone (connection lost)."""


# What gloo and NCCL say when a peer froze or died.  They raise plain RuntimeErrors (or
# torch.distributed.DistError subclasses), so the message is the only way to tell.
_PEER_FAILURE = re.compile(r"timed out|timeout|connection closed by peer|connection reset|"
                           r"broken pipe|socket closed|watchdog", re.I)


def rank_failure(e: BaseException, timeout_s: float) -> RankFailure | None:
    """``e`` as a :class:`RankFailure` with a message a user can act on, when it is a failed
    collective of a multi-process run; None otherwise (a genuine bug keeps its traceback)."""
    if not (dist.is_available() and dist.is_initialized()) or not isinstance(e, RuntimeError):
        return None
    text = str(e)
    if not (isinstance(e, getattr(dist, "DistError", ())) or _PEER_FAILURE.search(text)):
        return None
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    if re.search(r"timed out|timeout|watchdog", text, re.I):
        why = (f"a collective waited longer than train.dist_timeout_s = {timeout_s:g} s: another rank "
               f"is frozen or far behind")
    else:
        why = "another rank is gone (it crashed or was killed)"
    return RankFailure(f"{why} ({first}); with torchrun --max-restarts and --train.resume auto the "
                       f"group restarts from last.pt")


def parse_device(name: str, option: str = "--device") -> torch.device:
    """``name`` (auto, cpu, cuda or cuda:N) as a device, ``auto`` meaning CUDA when present.

    Raises :class:`DeviceError` naming ``option`` for any other name, and for a CUDA device this
    machine does not have.
    """
    kind, colon, index = name.partition(":")
    if name != "auto" and not (name == "cpu" or (kind == "cuda" and (not colon or index.isdigit()))):
        raise DeviceError(f"{option}: {name!r} is not auto, cpu, cuda or cuda:N")
    try:
        device = resolve_device(name)
    except ValueError as e:
        raise DeviceError(f"{option}: {e}") from None
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise DeviceError(f"{option}: {name!r}, but this machine has {count} CUDA device(s)")
    return device


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a world of one.

    ``timeout_s`` bounds every collective: a rank that freezes makes the others fail after it
    (gloo raises; NCCL's watchdog aborts the process) instead of hanging the job forever.
    Raises ValueError when the device is not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _restart_safe_store(rank, world, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _restart_safe_store(rank: int, world: int, timeout: datetime.timedelta):
    """The store for a worker that torchrun may restart, or None for the default (``env://``).

    torchrun shares its rendezvous TCPStore with the workers, and the keys a process group writes
    there outlive a restart: a restarted worker can read the address of a peer that died in the
    previous round and fail to connect (torch issue #135712).  On one node every worker has the same
    ``TORCHELASTIC_RESTART_COUNT``, which then namespaces the keys per round.  Across nodes the
    counts can differ (a node that only follows a restart does not count it), so there the fix is
    torch's own switch, ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on every node.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1:
        return None
    if int(env.get("GROUP_WORLD_SIZE", "1")) > 1:
        if rank == 0:
            print("warning: torchrun --max-restarts across nodes: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                  "on every node, or a restarted group may fail to connect (torch issue #135712)",
                  flush=True)
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"fastfm/restart{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def convert_sync_bn(model: torch.nn.Module, info: DistInfo, enabled: bool = True) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm for multi-GPU CUDA runs; a world of one, or CPU, gets the model back
    unchanged.  Model set-up order: ``convert_sync_bn`` -> :func:`wrap_ddp` -> ``torch.compile``."""
    if enabled and info.distributed and info.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """The DDP wrap, before ``torch.compile``; a world of one gets the model back as is.  Keep a
    reference to the unwrapped (uncompiled) model for checkpoints and evaluation.

    Why DDP first, then compile (``torch.compile(DDP(model))``, PyTorch's documented order): Dynamo
    compiles the model's frames while DDP's forward is active, and then its DDPOptimizer splits the
    graph at DDP's gradient-bucket boundaries (``bucket_cap_mb``), so each bucket's all-reduce is
    launched as soon as its gradients exist and overlaps the rest of backward.  One unsplit graph
    would produce every gradient at its very end and serialise communication after backward.
    """
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (no-op without a process group); returns ``t``."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (used for run-directory names)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(sync: bool = True) -> None:
    """Destroy the process group (no-op without one).

    ``sync``: meet every rank at a barrier first, so that no rank tears down its gloo/NCCL
    connections while a peer still talks to them (gloo then aborts the peer: "terminate called
    without an active exception").  Pass ``False`` on error paths, where a peer may be gone and a
    barrier would hang.
    """
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()
