"""Train a :class:`ProjectionHead` with the triplet loss and semi-hard negatives."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from services.training.head import ProjectionHead
from services.training.mining import epoch_batches, semi_hard_triplets
from services.training.settings import TrainConfig


@dataclass
class TrainStats:
    epochs: int = 0
    steps: int = 0
    batches_kept: int = 0
    batches_dropped: int = 0  # no positive pair
    batches_without_triplets: int = 0  # every pair easy: no step taken
    triplets_semi_hard: int = 0
    triplets_fallback: int = 0
    easy_pairs: int = 0
    loss_first_epoch: float = 0.0
    loss_last_epoch: float = 0.0
    wall_s: float = 0.0
    loss_per_epoch: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        raw = asdict(self)
        raw["wall_s"] = round(self.wall_s, 2)
        raw["loss_per_epoch"] = [round(v, 5) for v in self.loss_per_epoch]
        return raw


def train_head(
    features: np.ndarray, labels: np.ndarray, config: TrainConfig
) -> tuple[ProjectionHead, TrainStats]:
    """Fit a head on backbone features of augmented views.

    Args:
        features: float32 [n_images, n_views, in_dims], unit rows (view 0 = the image itself).
        labels: [n_images] label of each image.
        config: hyper-parameters; ``seed`` fixes initialisation, batches and views.

    Returns:
        The trained head (eval mode) and its statistics.
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, config.threads))
    rng = np.random.default_rng(config.seed)
    n_images, n_views, in_dims = features.shape
    samples = torch.from_numpy(np.ascontiguousarray(features.reshape(-1, in_dims), np.float32))
    sample_labels = np.repeat(np.asarray(labels), n_views)
    sample_images = np.repeat(np.arange(n_images), n_views)
    head = ProjectionHead(in_dims, config.dims, config.hidden)
    if config.init == "whitening":
        head.init_learned_whitening(features, np.asarray(labels), config.shrinkage)
    else:
        head.init_pca(features[:, 0])
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stats = TrainStats()
    for _ in range(config.epochs):
        epoch = epoch_batches(
            sample_labels, sample_images, config.batch_size, config.per_label, rng
        )
        stats.batches_kept += len(epoch.batches)
        stats.batches_dropped += epoch.dropped
        head.train()
        losses = []
        for batch in epoch.batches:
            emb = head(samples[batch])
            dist = (2.0 - 2.0 * emb @ emb.T).clamp_min(1e-12).sqrt()  # unit rows
            mined = semi_hard_triplets(dist.detach().numpy(), sample_labels[batch], config.margin)
            stats.triplets_semi_hard += mined.semi_hard
            stats.triplets_fallback += mined.fallback
            stats.easy_pairs += mined.easy_pairs
            if len(mined.indices) == 0:
                stats.batches_without_triplets += 1
                continue
            idx = torch.from_numpy(mined.indices)
            d_ap = dist[idx[:, 0], idx[:, 1]]
            d_an = dist[idx[:, 0], idx[:, 2]]
            loss = torch.relu(d_ap - d_an + config.margin).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            stats.steps += 1
            losses.append(float(loss.detach()))
        stats.loss_per_epoch.append(float(np.mean(losses)) if losses else 0.0)
        stats.epochs += 1
    head.eval()
    if stats.loss_per_epoch:
        stats.loss_first_epoch = stats.loss_per_epoch[0]
        stats.loss_last_epoch = stats.loss_per_epoch[-1]
    stats.wall_s = time.perf_counter() - t0
    return head, stats
