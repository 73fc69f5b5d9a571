"""The projection head: backbone features → ``dims``-d, L2-normalised."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ProjectionHead(nn.Module):
    """float32 [N, in_dims] → float32 [N, dims], unit L2 norm per row.

    ``hidden == 0``: one linear layer (a learned projection). ``hidden > 0``: a small MLP,
    Linear → ReLU → Linear.
    """

    def __init__(self, in_dims: int, dims: int, hidden: int = 0) -> None:
        super().__init__()
        self.in_dims, self.dims, self.hidden = int(in_dims), int(dims), int(hidden)
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dims, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dims)
            )
        else:
            self.net = nn.Linear(in_dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_dims] float32 → [N, dims] float32, unit L2 norm per row."""
        return nn.functional.normalize(self.net(x), p=2.0, dim=1, eps=1e-12)

    def init_pca(self, features: np.ndarray) -> None:
        """Start a linear head at the PCA projection of ``features`` (float32 [n, in_dims]).

        Training then starts from "the backbone, reduced to ``dims``" rather than from noise.
        Needs ``n >= dims``; an MLP head keeps its random initialisation.
        """
        if self.hidden > 0 or features.shape[0] < self.dims:
            return
        x = features.astype(np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        weight = vt[: self.dims]
        linear = self.net
        assert isinstance(linear, nn.Linear)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            linear.bias.copy_(torch.from_numpy((-(weight @ mean)).astype(np.float32)))

    def init_learned_whitening(
        self, features: np.ndarray, labels: np.ndarray, shrinkage: float = 0.1
    ) -> None:
        """Start a linear head at the learned whitening of Radenović et al. (2016).

        Whiten by the within-label covariance (views and photos of one label: the variation
        to ignore, rotation included), then keep the ``dims`` directions of largest spread
        across labels. ``features``: float32 [n_images, n_views, in_dims]; ``labels``:
        [n_images]. ``shrinkage`` regularises the within-label covariance towards a multiple
        of the identity. An MLP head keeps its random initialisation.
        """
        if self.hidden > 0:
            return
        n_images, n_views, in_dims = features.shape
        x = features.reshape(-1, in_dims).astype(np.float64)
        sample_labels = np.repeat(np.asarray(labels), n_views)
        centred = np.empty_like(x)
        for label in np.unique(sample_labels):
            rows = sample_labels == label
            centred[rows] = x[rows] - x[rows].mean(axis=0)
        within = centred.T @ centred / len(x)
        within += shrinkage * np.trace(within) / in_dims * np.eye(in_dims)
        values, vectors = np.linalg.eigh(within)
        whiten = vectors @ np.diag(values**-0.5) @ vectors.T
        mean = x.mean(axis=0)
        spread = (x - mean) @ whiten
        _, _, vt = np.linalg.svd(spread, full_matrices=False)
        weight = vt[: self.dims] @ whiten
        # Output is L2-normalised, so a global scale is free: unit rows on average keep the
        # optimiser's steps in proportion to the weights.
        weight /= np.linalg.norm(weight, axis=1).mean()
        linear = self.net
        assert isinstance(linear, nn.Linear)
        rows = weight.shape[0]  # fewer than dims when there are fewer samples than dims
        with torch.no_grad():
            linear.weight[:rows].copy_(torch.from_numpy(weight.astype(np.float32)))
            linear.bias[:rows].copy_(torch.from_numpy((-(weight @ mean)).astype(np.float32)))

    def embed(self, features: np.ndarray) -> np.ndarray:
        """float32 [n, in_dims] → float32 [n, dims] (eval mode, no grad)."""
        self.eval()
        with torch.no_grad():
            return self(torch.from_numpy(np.ascontiguousarray(features, np.float32))).numpy()
