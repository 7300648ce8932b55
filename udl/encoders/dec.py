"""DEC / IDEC: refine a trained encoder so its codes form `n_clusters` tight clusters.

Xie, Girshick and Farhadi, "Unsupervised Deep Embedding for Clustering Analysis" (ICML 2016);
IDEC: Guo, Gao, Liu and Yin, "Improved Deep Embedded Clustering with Local Structure
Preservation" (IJCAI 2017).

1. Centroids mu_j: k-means on the codes z_i of the training documents (the caller's
   `InitialClusters`: the embed step passes FAISS k-means, so encoders never import FAISS).
2. Soft assignment (Student-t kernel, alpha degrees of freedom):
   q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2) / sum_j' (same for j').
3. Target distribution, which sharpens q and divides by cluster frequency f_j = sum_i q_ij so
   large clusters do not absorb the others: p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j').
4. Minimise KL(P || Q) over encoder weights and centroids by mini-batch Adam (IDEC adds
   gamma x reconstruction loss). P is recomputed every `update_interval` batches, and training
   stops when fewer than a `tol` share of the hard labels argmax_j q_ij changed since the
   previous update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from udl.config import DECConfig
from udl.encoders.training import autocast
from udl.errors import ConfigError

__all__ = ["DECResult", "InitialClusters", "refine", "soft_assignment", "target_distribution"]

log = logging.getLogger(__name__)

# Clusters when `DECConfig.n_clusters` is empty and no cluster.k resolved it (library use).
DEFAULT_CLUSTERS = 10
# Maps a batch of row positions to (codes (b, dim), reconstruction errors (b,)).
CodeFn = Callable[[NDArray[np.int64]], tuple[torch.Tensor, torch.Tensor]]
# Maps (codes (n, dim) float32, k, seed) to k-means centroids (k, dim) float32 and labels (n,).
InitialClusters = Callable[
    [NDArray[np.float32], int, int], tuple[NDArray[np.float32], NDArray[np.int64]]
]


def soft_assignment(z: torch.Tensor, centroids: torch.Tensor, alpha: float) -> torch.Tensor:
    """Student-t soft assignment q (n, k) of codes z (n, dim) to centroids (k, dim); rows sum to 1.

    Example:
        >>> q = soft_assignment(torch.tensor([[0.0], [3.0]]), torch.tensor([[0.0], [3.0]]), 1.0)
        >>> [round(v, 2) for v in q[0].tolist()]
        [0.91, 0.09]
    """
    squared = torch.cdist(z.float(), centroids.float()).pow(2)
    kernel = (1.0 + squared / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(1e-12)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target p (n, k) of soft assignments q (n, k); rows sum to 1."""
    weight = q.pow(2) / q.sum(dim=0).clamp_min(1e-12)
    return weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class DECResult:
    """How refinement went.

    Attributes:
        cluster_centers_: float32 (k, dim) centroids in code space.
        labels_: int64 (n,) hard assignment of the training documents at the end.
        init_labels_: int64 (n,) the k-means assignment DEC started from.
        n_iter_: mini-batches run.
        label_changes: share of labels changed at each target update after the first.
        kl_loss: mean KL(P || Q) of the mini-batches between consecutive target updates.
        converged: stopped by `tol` rather than by `max_iterations`.
    """

    cluster_centers_: NDArray[np.float32]
    labels_: NDArray[np.int64]
    init_labels_: NDArray[np.int64]
    n_iter_: int = 0
    label_changes: list[float] = field(default_factory=list)
    kl_loss: list[float] = field(default_factory=list)
    converged: bool = False


@torch.no_grad()
def _all_codes(model: nn.Module, code_fn: CodeFn, n: int, batch_size: int) -> torch.Tensor:
    model.eval()
    parts = []
    for start in range(0, n, batch_size):
        with autocast(next(model.parameters()).device):
            parts.append(code_fn(np.arange(start, min(start + batch_size, n)))[0].float())
    return torch.cat(parts)


@torch.no_grad()
def _assign(
    model: nn.Module,
    code_fn: CodeFn,
    n: int,
    batch_size: int,
    centroids: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    return soft_assignment(_all_codes(model, code_fn, n, batch_size), centroids, alpha)


def _step(
    model: nn.Module,
    code_fn: CodeFn,
    rows: NDArray[np.int64],
    centroids: nn.Parameter,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: DECConfig,
) -> float:
    """One Adam step on KL(P || Q) (+ gamma x reconstruction for IDEC); returns the KL."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(centroids.device):
        z, reconstruction_error = code_fn(rows)
    q = soft_assignment(z, centroids, config.alpha)
    kl = F.kl_div(q.clamp_min(1e-12).log(), target, reduction="batchmean")
    loss = (
        kl + config.gamma * reconstruction_error.float().mean() if config.method == "idec" else kl
    )
    loss.backward()
    optimizer.step()
    return float(kl.detach())


def refine(
    model: nn.Module,
    code_fn: CodeFn,
    n_docs: int,
    config: DECConfig,
    *,
    batch_size: int,
    seed: int,
    initial: InitialClusters,
) -> DECResult:
    """Run DEC (or IDEC) on `n_docs` training documents, updating `model` in place.

    Args:
        model: the encoder module whose parameters `code_fn` uses.
        code_fn: codes and reconstruction errors of a batch of row positions.
        n_docs: training documents (rows 0..n_docs-1 of `code_fn`).
        config: method, k, kernel, stopping rule.
        batch_size: documents per mini-batch.
        seed: seeds k-means and the batch order.
        initial: the k-means that gives the starting centroids and labels.

    Returns:
        Centroids, labels and the history of the run.

    Raises:
        ConfigError: fewer training documents than clusters.
    """
    n_clusters = config.n_clusters or DEFAULT_CLUSTERS
    if n_docs < n_clusters:
        raise ConfigError(
            f"n_docs={n_docs} training documents should be >= encoder.dec.n_clusters="
            f"{n_clusters}; lower n_clusters or raise encoder.max_train_docs."
        )
    device = next(model.parameters()).device
    codes = _all_codes(model, code_fn, n_docs, batch_size)
    initial_centroids, labels = initial(codes.numpy(), n_clusters, seed)
    centroids = nn.Parameter(torch.from_numpy(initial_centroids).to(device))
    result = DECResult(initial_centroids, labels, labels.copy())
    optimizer = torch.optim.Adam([*model.parameters(), centroids], lr=config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_docs, generator=generator).numpy()
    cursor, losses = 0, []
    target = torch.zeros(0)
    for iteration in tqdm(range(config.max_iterations), desc="dec", disable=None):
        if iteration % config.update_interval == 0:
            q = _assign(model, code_fn, n_docs, batch_size, centroids, config.alpha)
            new_labels = q.argmax(dim=1).cpu().numpy()
            if iteration > 0:
                result.label_changes.append(float(np.mean(new_labels != result.labels_)))
                result.kl_loss.append(float(np.mean(losses)))
                losses = []
                log.info("dec %d: %.4f of labels changed", iteration, result.label_changes[-1])
            result.labels_ = new_labels
            if iteration > 0 and result.label_changes[-1] < config.tol:
                result.converged = True
                break
            target = target_distribution(q)
        if cursor + batch_size > n_docs:
            order, cursor = torch.randperm(n_docs, generator=generator).numpy(), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        losses.append(_step(model, code_fn, rows, centroids, target[rows], optimizer, config))
        result.n_iter_ = iteration + 1
    if not result.converged:
        q = _assign(model, code_fn, n_docs, batch_size, centroids, config.alpha)
        result.labels_ = q.argmax(dim=1).cpu().numpy()
    result.cluster_centers_ = centroids.detach().cpu().numpy().astype(np.float32)
    return result
