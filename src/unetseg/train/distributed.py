"""Data-parallel training over several processes: small plain functions around torch.distributed.

A run with ``world_size`` processes is launched by ``torchrun`` (which sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) or by :func:`launch` (``unetseg
train --nproc N``), which starts N local processes with the same variables. Each process holds
a replica of the model wrapped in ``DistributedDataParallel`` (gradients averaged after every
backward pass) and takes a contiguous ``batch_size / world_size`` share of every global batch,
so N processes take the same optimiser steps as one process with the whole batch.

Without those variables (``WORLD_SIZE`` unset or 1) every function here is a no-op and training
runs in one process as before.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from unetseg.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a (possibly one-process) training job.

    Attributes:
        rank: global index of this process, ``0 .. world_size - 1``.
        local_rank: index of this process on its machine; picks its GPU.
        world_size: number of processes over all machines.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as torchrun sets them (default 0, 0, 1).

        Raises:
            UserError: the values are not integers or do not fit together.
        """
        environ = os.environ if environ is None else environ
        try:
            env = cls(int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0")),
                      int(environ.get("WORLD_SIZE", "1")))
        except ValueError as exc:
            raise UserError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers ({exc}); launch"
                            " with torchrun or unetseg train --nproc N") from None
        if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
            raise UserError(f"RANK={env.rank} does not fit WORLD_SIZE={env.world_size}; launch"
                            " with torchrun or unetseg train --nproc N")
        return env


def launched() -> bool:
    """Whether this process was started by torchrun or :func:`launch` (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


# ------------------------------------------------------------------------ process group


def init_distributed(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the job's process group, if there is one, and pick this process's device.

    Backend gloo on CPUs, NCCL on GPUs. On a GPU the device becomes ``cuda:LOCAL_RANK`` (or
    ``cuda:0`` where each process sees a single GPU). Calling it again, or after the caller
    initialised ``torch.distributed`` itself, joins nothing new.

    Returns:
        ``(DistEnv, device)``; ``(DistEnv(), device)`` unchanged for a single process.
    """
    env = DistEnv.from_environ()
    if dist.is_available() and dist.is_initialized():
        env = DistEnv(dist.get_rank(), env.local_rank, dist.get_world_size())
    if not env.distributed:
        return env, device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if env.local_rank >= count and count != 1:
            raise UserError(f"process {env.local_rank} on this machine has no GPU of its own"
                            f" ({count} visible); start at most {count} processes per machine")
        device = torch.device("cuda", env.local_rank if env.local_rank < count else 0)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        log.info("process %d of %d joined (%s)", env.rank, env.world_size, dist.get_backend())
    return env, device


def cleanup(*, wait: bool = True) -> None:
    """Leave the process group, if one was joined.

    With ``wait`` (the normal end) every process first comes to leave it: without that
    barrier a process that finishes first tears down its side (rank 0 hosts the rendezvous
    store) while another still talks to it, which gloo can answer with an abort. Give
    ``wait=False`` on the way out of an error, which the other processes may never reach.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()


@contextmanager
def leaving_at_the_end() -> Iterator[None]:
    """Leave the process group after the block: together on success, at once on an error."""
    try:
        yield
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """The mean of ``value`` over all processes (the same result on every one)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes, on ``tensor``'s device."""
    if not env.distributed:
        return tensor
    t = tensor.to(_comm_device(), copy=True)
    dist.all_reduce(t)
    return t.to(tensor.device)


def broadcast_object(obj: T, env: DistEnv, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every process."""
    if not env.distributed:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (batch-norm running statistics) to every process, in place.

    ``DistributedDataParallel`` broadcasts them at the start of each training forward pass, so
    after the last one of an epoch each replica holds its own update; this makes them equal
    again before validation.
    """
    if not env.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def barrier(env: DistEnv) -> None:
    """Wait until every process gets here."""
    if env.distributed:
        dist.barrier()


# ------------------------------------------------------------------------ model and data


def distribute(model: nn.Module, env: DistEnv, device: torch.device, *,
               sync_batchnorm: bool = False) -> nn.Module:
    """The module to train: ``model`` itself for one process, else a DistributedDataParallel
    replica of it (batch norms converted to SyncBatchNorm, in place, if ``sync_batchnorm``).

    ``model`` stays the plain network to validate and save: its state dict has no ``module.``
    prefix and SyncBatchNorm keeps BatchNorm's keys, so saved files load into a plain UNet.

    Raises:
        UserError: ``sync_batchnorm`` on CPUs (torch synchronises batch norms on GPUs only).
    """
    if not env.distributed:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise UserError("synchronised batch norm needs GPUs (torch has no CPU version);"
                            " drop --sync-batchnorm or train on CUDA devices")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def batch_shard(global_batch: int, env: DistEnv) -> slice:
    """This process's rows of every global batch: a contiguous ``global_batch / world_size``.

    Raises:
        UserError: the batch does not split evenly over the processes.
    """
    if global_batch % env.world_size:
        raise UserError(f"--batch-size {global_batch} does not split over {env.world_size}"
                        f" processes; use a multiple of {env.world_size}")
    per_rank = global_batch // env.world_size
    return slice(env.rank * per_rank, (env.rank + 1) * per_rank)


def shard_indices(length: int, global_batch: int, env: DistEnv) -> list[int]:
    """Dataset indices this process reads, in order: its :func:`batch_shard` of each batch.

    Process ``r``'s ``k``-th local batch holds the rows ``batch_shard`` of the ``k``-th global
    batch ``[k * global_batch, (k + 1) * global_batch)``; incomplete trailing batches are dropped.
    """
    rows = batch_shard(global_batch, env)
    return [start + i for start in range(0, length - global_batch + 1, global_batch)
            for i in range(rows.start, rows.stop)]


# ------------------------------------------------------------------------ local launcher


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_threads(nproc: int) -> int:
    """CPU threads per process so that ``nproc`` processes share the cores without contention."""
    return max(1, (os.cpu_count() or 1) // nproc)


def _worker(local_rank: int, nproc: int, port: int, threads: int,
            fn: Callable[..., int | None], args: tuple[Any, ...]) -> None:
    """Entry of each process started by :func:`spawn_local`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    code = fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    # End here, as a forked child does: the interpreter's teardown would destroy whatever the
    # communication backend left behind in an order its threads do not survive.
    os._exit(code or 0)


def spawn_local(nproc: int, fn: Callable[..., int | None], *args: Any,
                threads: int | None = None) -> int:
    """Run ``fn(*args)`` in ``nproc`` fresh processes on this machine as one distributed job.

    Each process gets torchrun's variables (rendezvous on a free port of 127.0.0.1) and
    ``threads`` CPU threads (default: the cores shared out). ``fn`` must be importable by name
    (a module-level function). When one process fails the others are stopped.

    Returns:
        0, or the exit status of the first process that failed (``fn`` returning non-zero).

    Raises:
        torch.multiprocessing.ProcessRaisedException: a process raised; carries its traceback.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: give at least 1 process")
    threads = threads or default_threads(nproc)
    context = mp.start_processes(_worker, args=(nproc, free_port(), threads, fn, args),
                                 nprocs=nproc, join=False, start_method="spawn")
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code > 0 else 128 - exc.exit_code  # killed by a signal
    except KeyboardInterrupt:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join()
        raise
    return 0


def launch(nproc: int, entry: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run a command line ``entry(argv)`` in ``nproc`` local processes (``--nproc N``).

    The command line hands in its own entry point (a module-level function, so that spawned
    processes can import it by name): this module knows nothing of the command line above it.

    Returns:
        the exit status: 0, or the first failing process's.
    """
    log.info("starting %d training processes", nproc)
    return spawn_local(nproc, entry, list(argv))
