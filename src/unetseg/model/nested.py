"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation", DLMIA 2018, arXiv:1807.10165).

The nodes ``X[i][j]`` sit at level ``i`` (``1 / 2**i`` of the size, ``widths[i]`` channels);
``X[i][0]`` is the U-Net's encoder and every other node is a double conv over all earlier
nodes of its level and the upsampled node below-left of it (the paper's eq. 1)::

    X[i][j] = DoubleConv(cat(X[i][0], ..., X[i][j-1], Up(X[i+1][j-1])))

so the skips are dense, nested pathways rather than the U-Net's plain copies. The top nodes
``X[0][1..depth]`` are full-resolution outputs of U-Nets of depth 1..depth sharing one
encoder. With deep supervision each has a 1x1 head and all are trained together; a network
trained so can be pruned at inference to level ``L`` (the paper's Sec. 2, "model pruning"):
only the nodes with ``i + j <= L`` run, and ``X[0][L]``'s head gives the logits.

The nodes are held by diagonals ``k = i + j`` (:class:`NestedDiagonal`): diagonal ``k`` is the
encoder node ``X[k][0]`` and then ``X[k-1][1], ..., X[0][k]``, each of which needs only nodes
of earlier diagonals or earlier in its own, so pruning to ``L`` runs the first ``L`` diagonals.
"""

from __future__ import annotations

import torch
from torch import nn

from unetseg.config import ModelConfig
from unetseg.model.blocks import DoubleConv, Down, Size, Up
from unetseg.model.geometry import network_plan


class NestedNode(nn.Module):
    """One ``X[i][j]``, ``j >= 1``: upsample ``X[i+1][j-1]`` to level ``i`` (as the U-Net's
    up step, to ``width`` channels), concatenate after ``X[i][0..j-1]``, double conv.
    Volumes: ``scale`` is the pooling between the two levels, ``kernel`` level ``i``'s."""

    def __init__(self, width: int, deeper_width: int, j: int, cfg: ModelConfig, *,
                 scale: Size = 2, kernel: Size = 3):
        super().__init__()
        dims = cfg.spatial_dims
        step = Up(deeper_width, width, padding="same", norm=cfg.norm, up=cfg.up,
                  skip_channels=width, dims=dims, scale=scale, kernel=kernel)
        self.up = step.up
        self.conv = DoubleConv((j + 1) * width, width, padding="same", norm=cfg.norm,
                               dims=dims, kernel=kernel)

    def forward(self, deeper: torch.Tensor, same_level: list[torch.Tensor]) -> torch.Tensor:
        inputs = list(same_level)
        inputs.append(self.up(deeper))
        return self.conv(torch.cat(inputs, dim=1))


class NestedDiagonal(nn.Module):
    """Diagonal ``k`` of the node grid: the encoder node ``X[k][0]`` (max-pool + double conv),
    then ``X[k-j][j]`` for ``j = 1..k``."""

    def __init__(self, k: int, widths: list[int], cfg: ModelConfig):
        super().__init__()
        self.k = k
        kernels, pools = network_plan(cfg.depth, cfg.spatial_dims, cfg.kernel_sizes,
                                      cfg.pool_sizes)
        self.down = Down(widths[k - 1], widths[k], padding="same", norm=cfg.norm,
                         dims=cfg.spatial_dims, pool=pools[k - 1], kernel=kernels[k])
        self.nodes = nn.ModuleList(NestedNode(widths[k - j], widths[k - j + 1], j, cfg,
                                              scale=pools[k - j], kernel=kernels[k - j])
                                   for j in range(1, k + 1))

    def forward(self, rows: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Append this diagonal's nodes to ``rows`` (``rows[i]`` = ``[X[i][0], X[i][1], ...]``)."""
        rows.append([self.down(rows[self.k - 1][0])])
        j = 1
        for node in self.nodes:
            i = self.k - j
            rows[i].append(node(rows[i + 1][j - 1], rows[i]))
            j += 1
        return rows


class NestedUNetBody(nn.Module):
    """The node grid of depth ``cfg.depth``, run to ``levels`` diagonals at inference.

    Shape: (N, C, H, W), H and W multiples of ``2**depth`` -> in training the top nodes
    ``[X[0][depth], X[0][depth-1], ..., X[0][1]]`` (only the first without deep supervision),
    at inference ``[X[0][levels]]``; each (N, widths[0], H, W).
    """

    def __init__(self, cfg: ModelConfig, widths: list[int], levels: int):
        super().__init__()
        self.supervised: bool = cfg.deep_supervision
        self.levels = levels
        kernels, _ = network_plan(cfg.depth, cfg.spatial_dims, cfg.kernel_sizes, cfg.pool_sizes)
        self.inc = DoubleConv(cfg.in_channels, widths[0], padding="same", norm=cfg.norm,
                              dims=cfg.spatial_dims, kernel=kernels[0])
        self.diagonals = nn.ModuleList(NestedDiagonal(k, widths, cfg)
                                       for k in range(1, cfg.depth + 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        rows: list[list[torch.Tensor]] = [[self.inc(x)]]
        limit = len(self.diagonals) if self.training else self.levels
        for diagonal in self.diagonals:
            if diagonal.k <= limit:  # type: ignore[operator]
                rows = diagonal(rows)
        top = rows[0]
        if not (self.training and self.supervised):
            return [top[-1]]
        return [top[j] for j in range(len(top) - 1, 0, -1)]  # X[0][depth], ..., X[0][1]
