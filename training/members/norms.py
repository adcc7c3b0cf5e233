"""Normalisation layers of a classifier, swapped for a cross-camera experiment.

Batch norm keeps the training set's activation statistics and applies them to every image; a new
camera or stain shifts those statistics and the network reads the shift as morphology (Tsutsui et
al. 2023, the data README). Group norm normalises each image by its own statistics instead.
"""

from __future__ import annotations

from torch import nn


def group_norm(module: nn.Module, max_groups: int = 8) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` in place by a GroupNorm over the same channels (the
    most groups up to ``max_groups`` that divide them); returns ``module``. Parameter names stay
    (``weight``, ``bias``), so a batch-norm checkpoint's convolutions and affine terms still load."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
            setattr(module, name, nn.GroupNorm(groups, channels, eps=child.eps))
        else:
            group_norm(child, max_groups)
    return module
