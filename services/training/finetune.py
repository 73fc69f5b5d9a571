"""Fine-tune the backbone's last blocks together with the projection head.

The frozen trunk (stem + all but the last ``tail_blocks`` blocks) runs once per (image, view)
and its activations are kept (float16); only the tail, GeM, L2 and the head run in training, so
an epoch costs a fraction of a full forward/backward pass and fits a CPU. Batch-norm statistics
stay frozen (few images per batch). Losses: the semi-hard triplet loss of the linear head, or an
ArcFace-style additive angular margin softmax over the training labels.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from services.training.head import ProjectionHead
from services.training.mining import epoch_batches, semi_hard_triplets
from services.training.pipeline import Fitted
from services.training.settings import LOSSES, TrainConfig
from services.training.train import TrainStats

TRUNK_BATCH = 16


class SplitBackbone(Protocol):
    """A backbone that runs in two parts: ``forward_tail(forward_trunk(x, s), s)`` = features."""

    num_blocks: int

    def forward_trunk(self, x: torch.Tensor, split: int) -> torch.Tensor: ...

    def forward_tail(self, fmap: torch.Tensor, split: int) -> torch.Tensor: ...


class TailEmbedding(nn.Module):
    """Trunk activations → tail blocks → GeM → L2 → head (L2): [N,C,h,w] → [N, dims] float32.

    With ``head=None`` the output is the backbone's own global descriptor (unit rows).
    """

    def __init__(
        self, model: nn.Module, split: int, head: ProjectionHead | None, gem_p: float
    ) -> None:
        super().__init__()
        self.model = model  # GlobalEmbeddingModel: .backbone (SplitBackbone), .pool (GeM)
        self.split = split
        self.head = head
        self.gem_p = gem_p

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        """[N,C,h,w] float32 trunk activations → [N, backbone dims] float32, unit rows."""
        features = self.model.backbone.forward_tail(fmap, self.split)
        return nn.functional.normalize(self.model.pool(features), p=2.0, dim=1, eps=1e-12)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """[N,C,h,w] float32 → [N, dims] float32, unit L2 norm per row."""
        pooled = self.pooled(fmap)
        return pooled if self.head is None else self.head(pooled)


def trunk_activations(
    model: nn.Module, split: int, images: Sequence[np.ndarray], threads: int = 0
) -> np.ndarray:
    """Preprocessed images float32 [n,3,H,W] (as a sequence of [3,H,W]) → float16 [n,C,h,w]."""
    if threads > 0:
        torch.set_num_threads(threads)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), TRUNK_BATCH):
            batch = torch.from_numpy(np.stack(images[start : start + TRUNK_BATCH]))
            out.append(model.backbone.forward_trunk(batch, split).numpy().astype(np.float16))
    return np.concatenate(out)


def embed_activations(
    embedding: TailEmbedding, activations: np.ndarray, batch: int = 64
) -> np.ndarray:
    """float16 [..., C, h, w] activations → float32 [..., dims] through ``embedding`` (no grad)."""
    lead = activations.shape[:-3]
    flat = activations.reshape(-1, *activations.shape[-3:])
    device = next(embedding.parameters()).device
    embedding.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(flat), batch):
            chunk = torch.from_numpy(flat[start : start + batch].astype(np.float32))
            out.append(embedding(chunk.to(device)).cpu().numpy())
    vectors = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return vectors.reshape(*lead, vectors.shape[-1])


class ArcMarginLoss(nn.Module):
    """Additive angular margin softmax (ArcFace): cross-entropy over ``s·cos(θ + m·[y])``."""

    def __init__(self, dims: int, classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dims))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = float(scale), float(margin)

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """embeddings float32 [N, dims] (unit rows), targets int64 [N] → scalar loss."""
        cosine = embeddings @ nn.functional.normalize(self.weight, dim=1).T
        theta = torch.acos(cosine.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        target_mask = nn.functional.one_hot(targets, cosine.shape[1]).bool()
        logits = torch.where(target_mask, torch.cos(theta + self.margin), cosine)
        return nn.functional.cross_entropy(self.scale * logits, targets)


def _triplet_loss(
    emb: torch.Tensor, labels: np.ndarray, margin: float, stats: TrainStats
) -> torch.Tensor | None:
    """Semi-hard triplet loss of a batch (unit rows), or None when it has no triplet."""
    dist = (2.0 - 2.0 * emb @ emb.T).clamp_min(1e-12).sqrt()
    mined = semi_hard_triplets(dist.detach().cpu().numpy(), labels, margin)
    stats.triplets_semi_hard += mined.semi_hard
    stats.triplets_fallback += mined.fallback
    stats.easy_pairs += mined.easy_pairs
    if len(mined.indices) == 0:
        return None
    idx = torch.from_numpy(mined.indices).to(emb.device)
    return torch.relu(dist[idx[:, 0], idx[:, 1]] - dist[idx[:, 0], idx[:, 2]] + margin).mean()


def finetune_tail(
    model: nn.Module,
    split: int,
    activations: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    gem_p: float,
    on_epoch: Callable[[int, float], None] | None = None,
    device: str = "cpu",
) -> tuple[TailEmbedding, TrainStats]:
    """Train a copy of the backbone's tail and a head on cached trunk activations.

    Args:
        model: the GlobalEmbeddingModel (not modified: its tail is copied).
        split: blocks ``[:split]`` form the frozen trunk.
        activations: float16 [n_images, n_views, C, h, w] trunk outputs (view 0 = the image).
        labels: [n_images] label of each image.
        config: ``loss``, ``epochs``, ``lr`` (head), ``tail_lr_scale`` (tail = lr x scale), ...
        device: torch device of the training (the result is moved back to the CPU).

    Returns:
        The trained embedding (eval mode; ``embedding.model`` holds the tuned backbone) and
        its statistics.
    """
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    tuned = copy.deepcopy(model).eval().to(device)
    embedding = TailEmbedding(tuned, split, None, gem_p)
    n_images, n_views = activations.shape[:2]
    pooled = embed_activations(embedding, activations)  # [n_images, n_views, backbone dims]
    head = ProjectionHead(pooled.shape[-1], config.dims, config.hidden)
    head.init_learned_whitening(pooled, np.asarray(labels), config.shrinkage)
    embedding.head = head.to(device)
    samples = activations.reshape(n_images * n_views, *activations.shape[2:])
    sample_labels = np.repeat(np.asarray(labels), n_views)
    sample_images = np.repeat(np.arange(n_images), n_views)
    classes = {label: i for i, label in enumerate(sorted(set(sample_labels.tolist()), key=str))}
    targets = torch.tensor([classes[label] for label in sample_labels.tolist()], device=device)
    tail_params = [p for p in tuned.parameters() if p.requires_grad]
    groups: list[dict[str, object]] = [
        {"params": list(head.parameters()), "lr": config.lr},
        {"params": tail_params, "lr": config.lr * config.tail_lr_scale},
    ]
    arc: ArcMarginLoss | None = None
    if config.loss == "arcface":
        arc = ArcMarginLoss(config.dims, len(classes), config.arc_scale, config.arc_margin)
        arc = arc.to(device)
        groups.append({"params": list(arc.parameters()), "lr": config.lr * config.arc_lr_scale})
    optimiser = torch.optim.AdamW(groups, weight_decay=config.weight_decay)  # type: ignore[arg-type]
    stats = TrainStats()
    for epoch_index in range(config.epochs):
        if arc is None:
            epoch = epoch_batches(
                sample_labels, sample_images, config.batch_size, config.per_label, rng
            )
            batches, stats.batches_dropped = epoch.batches, stats.batches_dropped + epoch.dropped
        else:
            # One random view of every image per epoch, as the triplet batches take: the cost
            # of an epoch is the number of images, whatever the number of views.
            views = rng.integers(0, n_views, size=n_images)
            order = rng.permutation(n_images) * n_views
            order += views[order // n_views]
            step = config.batch_size
            batches = [order[i : i + step] for i in range(0, len(order), step)]
        stats.batches_kept += len(batches)
        head.train()  # the backbone stays in eval mode: frozen batch-norm statistics
        losses = []
        for batch in batches:
            emb = embedding(torch.from_numpy(samples[batch].astype(np.float32)).to(device))
            if arc is None:
                loss = _triplet_loss(emb, sample_labels[batch], config.margin, stats)
                if loss is None:
                    stats.batches_without_triplets += 1
                    continue
            else:
                loss = arc(emb, targets[torch.from_numpy(np.asarray(batch)).to(device)])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            stats.steps += 1
            losses.append(float(loss.detach()))
        stats.loss_per_epoch.append(float(np.mean(losses)) if losses else 0.0)
        stats.epochs += 1
        if on_epoch is not None:
            on_epoch(epoch_index, stats.loss_per_epoch[-1])
    embedding.eval().cpu()
    if stats.loss_per_epoch:
        stats.loss_first_epoch = stats.loss_per_epoch[0]
        stats.loss_last_epoch = stats.loss_per_epoch[-1]
    stats.wall_s = time.perf_counter() - t0
    return embedding, stats


class TailTrainer:
    """Fine-tunes the last blocks of ``model`` with the head (encoder: :class:`TrunkRunner`)."""

    def __init__(self, model: nn.Module, split: int, gem_p: float, device: str = "cpu") -> None:
        self.model, self.split, self.gem_p, self.device = model, split, gem_p, device
        self._raw = TailEmbedding(model, split, None, gem_p)

    def raw(self, encoded: np.ndarray) -> np.ndarray:
        """float16 [..., C, h, w] trunk activations → the untrained backbone's vectors."""
        return embed_activations(self._raw, encoded)

    def fit(self, encoded: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Fitted:
        embedding, stats = finetune_tail(
            self.model, self.split, encoded, labels, config, self.gem_p, device=self.device
        )
        assert embedding.head is not None
        return Fitted(
            embedding.head, embedding.model, stats, lambda x: embed_activations(embedding, x)
        )
