"""Triplet-loss training of a projection head on backbone features (build/train path: torch).

augment (views) → features (backbone, cached) → batches + mining (semi-hard) → head →
evaluate → export (backbone + head as one ONNX) → job (object store, Redis, model registry).
"""
