"""Training settings (torch-free, so the CLI can read their defaults without importing torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LOSSES = ("triplet", "arcface")


@dataclass(frozen=True)
class TrainConfig:
    dims: int = 256
    hidden: int = 0  # 0 = linear head
    epochs: int = 20  # an epoch = one view of every image (its cost: the number of images)
    batch_size: int = 64
    per_label: int = 4  # images of one label side by side in a batch
    margin: float = 0.2  # on Euclidean distances between unit vectors
    lr: float = 3e-4
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1
    # Start: "whitening" (learned whitening, Radenović et al.: closed form from the labels)
    # or "pca". Chosen, like epochs/lr/shrinkage, on ukbench groups 140-174 held out of the
    # training groups 0-139 (never on the evaluation groups).
    init: str = "whitening"
    shrinkage: float = 0.5  # of the within-label covariance, for init="whitening"
    # Backbone blocks fine-tuned with the head (0 = head only, on frozen backbone features)
    # and the loss ("triplet" or "arcface"); see services/training/finetune.py. Chosen by
    # bench/finetune_eval.py on SMVS (train on the 100 covers, 400 phone queries): P@1 head
    # only + triplet 0.535, 3 blocks + triplet 0.5625, 3 blocks + ArcFace 0.645; 6/9/13 blocks
    # + ArcFace 0.635/0.6675/0.6525 for 2-5x the training cost.
    tail_blocks: int = 3
    loss: str = "arcface"
    tail_lr_scale: float = 0.1  # the tail's learning rate = lr x this
    arc_scale: float = 30.0
    arc_margin: float = 0.2
    arc_lr_scale: float = 10.0  # the ArcFace class centres' learning rate = lr x this

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class PipelineSettings:
    train: TrainConfig
    views: int = 7  # augmented views per training image, besides the image itself
    eval_views: int = 1  # augmented query views per held-out image
    holdout: float = 0.2  # fraction of labels held out (unseen labels)
    holdout_photos: float = 0.2  # fraction of the photos of each label with several (known)
    refit: bool = True  # once accepted, train again on every image before publishing
