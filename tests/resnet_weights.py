"""A ResNet state dict in torchvision's layout, written by hand for the encoder-weight tests
(torchvision is not a dependency)."""

from __future__ import annotations

import torch


def torchvision_state(blocks: tuple[int, ...] = (2, 2, 2, 2), bottleneck: bool = False,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of torchvision's ``resnet18``
    (``resnet50`` with ``bottleneck``, blocks (3, 4, 6, 3)), classifier included, written out
    from torchvision's ``resnet.py``."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        scale = (2 / (cin * k * k)) ** 0.5
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * scale

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    expansion = 4 if bottleneck else 1
    cin = 64
    for layer, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{layer}.{b}"
            out = width * expansion
            if bottleneck:
                conv(f"{p}.conv1", width, cin, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", out, width, 1)
                bn(f"{p}.bn3", out)
            else:
                conv(f"{p}.conv1", width, cin, 3)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3)
                bn(f"{p}.bn2", width)
            if b == 0 and (layer > 1 or cin != out):
                conv(f"{p}.downsample.0", out, cin, 1)
                bn(f"{p}.downsample.1", out)
            cin = out
    state["fc.weight"] = torch.randn(1000, cin, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state
