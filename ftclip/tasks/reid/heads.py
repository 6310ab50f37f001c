"""Re-identification heads: BNNecks + bias-free classifiers (CLIP-ReID) and SIE camera embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ftclip.stages import keep_frozen


class BNNeckClassifier(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free linear classifier (init N(0, 0.001))."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        keep_frozen(self.bn.bias)  # CLIP-ReID: the BNNeck bias is never trained
        nn.init.constant_(self.bn.weight, 1.0)
        nn.init.constant_(self.bn.bias, 0.0)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (feature after BN, class logits)."""
        bn = self.bn(feat)
        return bn, self.classifier(bn)


class CameraEmbedding(nn.Module):
    """SIE: a learned vector per camera (trunc-normal 0.02), scaled, added to the class token."""

    def __init__(self, num_cameras: int, width: int, coefficient: float = 3.0):
        super().__init__()
        self.coefficient = coefficient
        self.weight = nn.Parameter(torch.zeros(num_cameras, width))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, camids: torch.Tensor) -> torch.Tensor:
        return self.coefficient * self.weight[camids]


class ReidHead(nn.Module):
    """Two BNNeck classifiers (vision width and embedding dim) and an optional SIE."""

    def __init__(self, width: int, embed_dim: int, num_ids: int, num_cameras: int = 0, sie_coefficient: float = 0.0):
        super().__init__()
        self.neck = BNNeckClassifier(width, num_ids)
        self.neck_proj = BNNeckClassifier(embed_dim, num_ids)
        self.sie = CameraEmbedding(num_cameras, width, sie_coefficient) if num_cameras > 0 else None
