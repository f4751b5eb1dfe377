"""The loss numerics: cross-entropy against sparse soft targets, on logits or fused with the LM head (no Composer)."""

from prefix_composer.losses.fused import fused_linear_soft_target_cross_entropy
from prefix_composer.losses.soft_target import soft_target_cross_entropy

__all__ = ['fused_linear_soft_target_cross_entropy', 'soft_target_cross_entropy']
