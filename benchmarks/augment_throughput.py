"""Can batched augmentation keep up with training? CPU throughput of both, side by side.

Measures augmented pairs/s of :func:`unetseg.data.augment.augment_batch` with the default
:class:`~unetseg.config.AugmentConfig`, and train steps/s of a ``UNet(1, 2, width=32, depth=4)``
(forward, cross-entropy, backward, AdamW step) on the same batch shape. Each phase warms up,
then repeats for about ``--seconds`` and reports the median time per call, plus the process's
CPU utilisation (user + sys CPU time over wall time, so 2.0 means two cores busy).

Usage::

    python benchmarks/augment_throughput.py --batch 4 --size 256 --channels 1 --seconds 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unetseg.config import AugmentConfig
from unetseg.data.augment import augment_batch
from unetseg.model import UNet


@dataclass(frozen=True)
class Timing:
    """Median seconds per call, number of timed calls, and CPU seconds per wall second."""

    median_s: float
    calls: int
    cpu_utilisation: float


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_calls(fn: Callable[[], object], *, seconds: float, warmup: int = 2,
               min_calls: int = 3) -> Timing:
    """Call ``fn`` ``warmup`` times, then until ``seconds`` have passed (at least ``min_calls``)."""
    for _ in range(warmup):
        fn()
    durations: list[float] = []
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    while len(durations) < min_calls or time.perf_counter() - wall0 < seconds:
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    return Timing(statistics.median(durations), len(durations), cpu / wall)


def augment_step(batch: int, size: int, channels: int) -> Callable[[], object]:
    """One ``augment_batch`` call on a fixed random batch with the default config."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((batch, channels, size, size), generator=generator)
    masks = torch.randint(0, 2, (batch, size, size), generator=generator)
    cfg = AugmentConfig()
    return lambda: augment_batch(images, masks, cfg, generator=generator)


def train_step(batch: int, size: int, channels: int) -> Callable[[], object]:
    """One optimisation step of ``UNet(channels, 2, width=32, depth=4)`` with AdamW."""
    torch.manual_seed(0)
    model = UNet(channels, 2, width=32, depth=4).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand((batch, channels, size, size))
    masks = torch.randint(0, 2, (batch, size, size))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), masks)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per phase")
    args = parser.parse_args(argv)

    shape = f"{args.batch} x {args.channels} x {args.size} x {args.size}"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {shape}, CPU")
    aug = time_calls(augment_step(args.batch, args.size, args.channels), seconds=args.seconds)
    pairs_per_s = args.batch / aug.median_s
    print(f"augment_batch: {aug.median_s * 1e3:.2f} ms/batch (median of {aug.calls}), "
          f"{pairs_per_s:.1f} pairs/s, CPU utilisation {aug.cpu_utilisation:.2f}")
    train = time_calls(train_step(args.batch, args.size, args.channels), seconds=args.seconds,
                       warmup=1)
    steps_per_s = 1 / train.median_s
    consumed = steps_per_s * args.batch
    print(f"train step:    {train.median_s * 1e3:.1f} ms/step (median of {train.calls}), "
          f"{steps_per_s:.3f} steps/s = {consumed:.2f} pairs/s, "
          f"CPU utilisation {train.cpu_utilisation:.2f}")
    print(f"ratio: augmentation supplies {pairs_per_s / consumed:.1f}x the pairs training "
          f"consumes")


if __name__ == "__main__":
    main()
