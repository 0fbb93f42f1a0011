"""Backbones, heads and PoseNet with random weights: shapes, names, configs, ONNX export (offline)."""

from __future__ import annotations

import typing
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pydantic
import pytest
import torch
from torch import nn

from core.registry import Registry
from models.backbones import BACKBONES, build_backbone
from models.backbones.efficientnet_lite import SameConv2d, same_padding
from models.heads import AuxHeatmapHead, DeconvHead, LightHead
from models.network import HEADS, ModelConfig, PoseNet, build_model

H, W = 128, 96  # non-square on purpose
K = 14


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, single-threaded: on the shared 2-core boxes two intra-op threads stall (often 10x+)
    whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_macs(model: nn.Module, inputs: object) -> int:
    """Multiply-accumulates of the Conv2d / ConvTranspose2d layers in `model(inputs)`, batch of one."""
    total = 0

    def count(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kernel = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel scatters a Cout x k x k patch
            total += args[0][0].numel() * m.out_channels // m.groups * kernel
        else:
            total += out[0].numel() * m.in_channels // m.groups * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return total


def randomise_bn_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Give every BN the running stats of a real forward pass, and the heatmap layers larger weights,
    so that eval-mode outputs have the scale of trained heatmaps (peaks ~1) instead of the ~1e-15 of
    the SimpleBaseline init."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the stats
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels == K:
            nn.init.normal_(m.weight, std=0.02)
    model.eval()


# ---------------------------------------------------------------- registries and configs


def test_registry_names_match_config_literals() -> None:
    hints = typing.get_type_hints(ModelConfig)
    assert set(typing.get_args(hints["backbone"])) == set(BACKBONES.names())
    assert set(typing.get_args(hints["head"])) == set(HEADS.names())


def test_registry_is_loud() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(2)
    with pytest.raises(KeyError, match="known: \\['a'\\]"):
        reg.get("b")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aux_stages": (4,)},
        {"aux_stages": (1, 1)},
        {"pretrained": False, "weights_path": "x.pth"},
        {"backbone": "resnet18"},  # pretrained=True but no downloadable ResNet weights
        {"num_deconv_layers": 4},
        {"head_channels": 0},
        {"unknown_key": 1},
        {"backbone": "vgg16"},
    ],
)
def test_config_rejects(kwargs: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(**kwargs)


def test_config_is_frozen() -> None:
    cfg = ModelConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.num_keypoints = 17  # type: ignore[misc]
    assert ModelConfig(backbone="resnet18", weights_path="r18.pth").pretrained


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_strides_and_channels(name: str) -> None:
    model = build_backbone(name, pretrained=False).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, H, W))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, H // s, W // s) for c, s in zip(model.out_channels, (4, 8, 16, 32))
    ]
    assert len(model.mean) == len(model.std) == 3


def test_torchvision_key_names() -> None:
    """Spot checks against torchvision's state_dict layout (its counts minus fc/classifier)."""
    expected = {
        "resnet18": (120, ["layer2.0.downsample.1.running_mean", "layer4.1.bn2.running_var"]),
        "resnet50": (318, ["layer1.0.downsample.0.weight", "layer3.5.conv3.weight", "layer4.2.bn3.bias"]),
        "mobilenet_v2": (
            312,
            [
                "features.1.conv.0.0.weight",
                "features.1.conv.2.running_mean",
                "features.17.conv.1.1.weight",
                "features.17.conv.3.bias",
                "features.18.1.weight",
            ],
        ),
    }
    for name, (count, keys) in expected.items():
        state = build_backbone(name, pretrained=False).state_dict()
        assert len(state) == count, name
        assert all(k in state for k in keys), name
    assert "layer1.0.downsample.0.weight" not in build_backbone("resnet18", pretrained=False).state_dict()


def test_resnet_weights_path(tmp_path) -> None:
    src = build_backbone("resnet18", pretrained=False).state_dict()
    state = {**src, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "r18.pth")
    model = build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "r18.pth"))
    assert all(torch.equal(v, src[k]) for k, v in model.state_dict().items())

    del state["layer3.1.conv2.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="missing 1 keys"):
        build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match="weights_path"):
        build_backbone("resnet18", pretrained=True)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (224, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (96, 3, 1, (1, 1))],
)
def test_same_padding_matches_tf(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == pads


def test_same_conv_output_is_ceil_of_input_over_stride() -> None:
    conv = SameConv2d(3, 4, 5, stride=2)
    for h, w in [(128, 96), (127, 95), (33, 10)]:
        assert conv(torch.randn(1, 3, h, w)).shape[-2:] == (-(-h // 2), -(-w // 2))
    # the extra padding goes to the bottom/right (TF), so the top-left 3x3 window is unpadded
    conv3 = SameConv2d(1, 1, 3, stride=2)
    nn.init.ones_(conv3.weight)
    assert conv3(torch.ones(1, 1, 4, 4))[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


# ---------------------------------------------------------------- heads and PoseNet


@pytest.mark.parametrize("head", ["deconv", "light"])
@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_posenet_shapes(backbone: str, head: str) -> None:
    cfg = ModelConfig(backbone=backbone, head=head, pretrained=False, aux_stages=(2, 0, 3), num_keypoints=K)
    model = build_model(cfg).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        main = model(x)
        outs = model.forward_all(x)
    assert len(outs) == 4
    assert all(o.shape == (2, K, H // 4, W // 4) for o in outs)
    assert torch.equal(outs[0], main)
    assert model.heatmap_stride == 4 and model.mean == type(model.backbone).mean


@pytest.mark.parametrize(("h", "w"), [(256, 192), (192, 144), (160, 128)])
@pytest.mark.parametrize(
    "head", [{"head": "light"}, {"num_deconv_layers": 1}, {"num_deconv_layers": 2}, {"num_deconv_layers": 3}]
)
def test_output_is_quarter_resolution(h: int, w: int, head: dict) -> None:
    model = PoseNet(ModelConfig(pretrained=False, aux_stages=(1,), **head)).eval()
    with torch.no_grad():
        outs = model.forward_all(torch.randn(1, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [(1, K, h // 4, w // 4)] * 2


def test_deconv_head_init_and_stage() -> None:
    head = DeconvHead((24, 32, 96, 1280), K, channels=64, num_layers=3)
    deconvs = [m for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(m.bias is None and m.kernel_size == (4, 4) for m in deconvs)
    assert abs(deconvs[0].weight.std().item() - 0.001) < 2e-4
    assert head.final_layer.bias.abs().max() == 0
    # 3 layers read only the stride-32 map: NaNs elsewhere must not reach the output
    feats = [torch.full((1, c, H // s, W // s), float("nan")) for c, s in zip((24, 32, 96, 1280), (4, 8, 16, 32))]
    feats[3] = torch.randn_like(feats[3])
    assert head(feats).shape == (1, K, H // 4, W // 4) and torch.isfinite(head(feats)).all()


def test_light_head_is_much_cheaper() -> None:
    channels = (24, 32, 96, 1280)
    feats = [torch.randn(1, c, H // s, W // s) for c, s in zip(channels, (4, 8, 16, 32))]
    deconv = conv_macs(DeconvHead(channels, K, channels=128).eval(), feats)
    light = conv_macs(LightHead(channels, K, channels=128).eval(), feats)
    assert light * 5 < deconv, (light, deconv)  # measured: 9.8 M vs 95.7 M


def test_light_head_uses_every_stage() -> None:
    channels = (24, 32, 96, 1280)
    head = LightHead(channels, K).eval()
    feats = [torch.randn(1, c, H // s, W // s) for c, s in zip(channels, (4, 8, 16, 32))]
    randomise_bn_stats(head, feats)
    with torch.no_grad():
        base = head(feats)
        for i in range(4):
            changed = list(feats)
            changed[i] = torch.randn_like(feats[i])
            assert not torch.allclose(head(changed), base), f"stage {i} ignored"


def test_aux_head_upsamples_to_main_size() -> None:
    aux = AuxHeatmapHead(96, K, channels=32).eval()
    out = aux(torch.randn(2, 96, H // 16, W // 16), (H // 4, W // 4))
    assert out.shape == (2, K, H // 4, W // 4)


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize(("backbone", "head"), [("mobilenet_v2", "deconv"), ("efficientnet_lite0", "light")])
def test_onnx_export_matches_torch(tmp_path, backbone: str, head: str) -> None:
    model = build_model(ModelConfig(backbone=backbone, head=head, pretrained=False, aux_stages=(1,)))
    randomise_bn_stats(model, torch.randn(4, 3, H, W))
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and size-to-int tracer warnings
        torch.onnx.export(
            model,
            (torch.randn(2, 3, H, W),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["heatmaps"],
            dynamic_axes={"input": {0: "batch"}, "heatmaps": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, H, W)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (n, K, H // 4, W // 4)
        assert 0.3 < np.abs(expected).max() < 3  # heatmap scale, not the init's near-zero maps
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
