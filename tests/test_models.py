"""Structure and numbers of every model: PAPER.md's counts, torchvision parity, the registry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reslab.models import (
    BasicBlock,
    Bottleneck,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    ProjectionShortcut,
    complexity,
    create_model,
    list_models,
    register_model,
    shortcut_factory,
)

# (name, options, params, multiply-adds) from PAPER.md section 2.
PAPER_COUNTS = [
    ("resnet18", {}, 11_689_512, 1.814e9),
    ("resnet34", {}, 21_797_672, 3.664e9),
    ("resnet34", {"shortcut": "A"}, 21_623_848, 3.644e9),
    ("resnet34", {"shortcut": "C"}, 22_716_840, 3.831e9),
    ("resnet50", {}, 25_557_032, 3.858e9),
    ("resnet50", {"stride_in": "3x3"}, 25_557_032, 4.089e9),
    ("resnet101", {}, 44_549_160, 7.570e9),
    ("resnet101", {"stride_in": "3x3"}, 44_549_160, 7.801e9),
    ("resnet152", {}, 60_192_808, 11.282e9),
    ("resnet152", {"stride_in": "3x3"}, 60_192_808, 11.514e9),
    ("resnet20", {}, 269_722, 40.55e6),
    ("resnet32", {}, 464_154, 68.9e6),
    ("resnet44", {}, 658_586, 97.2e6),
    ("resnet56", {}, 853_018, 125.5e6),
    ("resnet110", {}, 1_727_962, 252.9e6),
    ("resnet1202", {}, 19_421_274, 2_829e6),
    ("resnet20", {"shortcut": "B"}, 272_474, None),
    ("resnet32", {"shortcut": "B"}, 466_906, None),
    ("resnet44", {"shortcut": "B"}, 661_338, None),
    ("resnet56", {"shortcut": "B"}, 855_770, None),
    ("resnet110", {"shortcut": "B"}, 1_730_714, None),
    ("resnet1202", {"shortcut": "B"}, 19_424_026, None),
]


@pytest.mark.parametrize(("name", "options", "params", "macs"), PAPER_COUNTS)
def test_paper_counts(name, options, params, macs):
    c = complexity(create_model(name, **options))
    assert c.params == params
    if macs is not None:
        assert c.macs == pytest.approx(macs, rel=0.005)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 20, 32, 44, 56, 110])
def test_plain_equals_option_a(depth):
    plain, resnet = create_model(f"plain{depth}"), create_model(f"resnet{depth}", shortcut="A")
    assert complexity(plain) == complexity(resnet)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in resnet.named_parameters()]
    assert not plain.residual and resnet.residual
    assert all(b.downsample is None and not b.residual for b in plain.blocks())


@pytest.mark.parametrize(
    ("name", "size", "classes"),
    [
        ("resnet20", 32, 10),
        ("plain56", 32, 10),
        ("preact_resnet164", 32, 10),
        ("resnet18", 224, 1000),
        ("resnet50", 160, 1000),
        ("preact_resnet18", 224, 1000),
        ("plain34", 97, 1000),
    ],
)
def test_output_shapes(name, size, classes):
    model = create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[:2] == (2, model.num_features)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, classes)


def test_num_classes_and_in_chans():
    model = create_model("resnet20", num_classes=100, in_chans=1)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 100)
    assert model.conv1.in_channels == 1


def test_cifar_geometry():
    """3 stages of 2n layers on 32/16/8 maps with 16/32/64 filters: 6n+2 weighted layers."""
    model = create_model("resnet56")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 56
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [9, 9, 9]
    assert not hasattr(model, "layer4")
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, n=name: shapes.__setitem__(n, o.shape[1:])
        )
    model(torch.randn(2, 3, 32, 32))
    assert shapes == {
        "layer1": (16, 32, 32),
        "layer2": (32, 16, 16),
        "layer3": (64, 8, 8),
    }


def test_shortcut_options_structure():
    a = create_model("resnet20")
    assert isinstance(a.layer2[0].downsample, PadShortcut)
    assert a.layer2[1].downsample is None and a.layer1[0].downsample is None
    b = create_model("resnet34")  # ImageNet default is option B
    assert isinstance(b.layer2[0].downsample, ProjectionShortcut)
    assert b.layer1[0].downsample is None and b.layer2[1].downsample is None
    c = create_model("resnet34", shortcut="C")
    assert all(isinstance(blk.downsample, ProjectionShortcut) for blk in c.blocks())


def test_torchvision_parameter_names():
    names = set(create_model("resnet20", shortcut="B").state_dict())
    assert {
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
    } <= names
    assert {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "fc.weight"} <= names


def test_pad_shortcut_pads_zeros():
    x = torch.randn(2, 4, 6, 6)
    after = PadShortcut(4, 8, 2)(x)
    assert after.shape == (2, 8, 3, 3)
    assert torch.equal(after[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(after[:, 4:]) == 0
    both = PadShortcut(4, 8, 2, where="both")(x)
    assert torch.equal(both[:, 2:6], x[:, :, ::2, ::2])
    assert torch.count_nonzero(both[:, :2]) == 0 and torch.count_nonzero(both[:, 6:]) == 0


@pytest.mark.parametrize("stride_in", ["1x1", "3x3"])
def test_bottleneck_stride_position(stride_in):
    block = create_model("resnet50", stride_in=stride_in).layer2[0]
    assert block.conv1.stride == ((2, 2) if stride_in == "1x1" else (1, 1))
    assert block.conv2.stride == ((1, 1) if stride_in == "1x1" else (2, 2))


@pytest.mark.parametrize(
    ("block_cls", "width"),
    [(BasicBlock, 16), (Bottleneck, 4), (PreActBasicBlock, 16), (PreActBottleneck, 4)],
)
def test_zero_init_block_is_identity(block_cls, width):
    in_ch = width * block_cls.expansion
    for option in ("A", "B", "C"):
        block = block_cls(
            in_ch,
            width,
            1,
            shortcut_factory(option, norm=not block_cls.__name__.startswith("PreAct")),
        )
        block.zero_init_last()
        x = torch.rand(4, in_ch, 8, 8)  # non-negative, as after a ReLU
        preact = block_cls in (PreActBasicBlock, PreActBottleneck)
        for train in (True, False):
            block.train(train)
            if block.downsample is None:
                expected = x
            elif preact and option == "C":  # pre-activation projections read BN-ReLU(x)
                expected = block.downsample(torch.relu(block.bn1(x)))
            else:
                expected = block.downsample(x)
            torch.testing.assert_close(block(x), expected if preact else torch.relu(expected))
        if option in ("A", "B"):
            torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("name", ["resnet56", "resnet50", "preact_resnet110", "preact_resnet50"])
def test_zero_init_residual_model_starts_as_shortcuts(name):
    """Every block with an identity shortcut passes its input through unchanged at init."""
    model = create_model(name, zero_init_residual=True).train()
    seen = []

    def check(block, inputs, output):
        if block.downsample is None:
            torch.testing.assert_close(output, inputs[0])
            seen.append(block)

    for block in model.blocks():
        block.register_forward_hook(check)
    size = model.default_input_size[1] // 2
    model(torch.randn(2, 3, size, size))
    assert len(seen) == sum(b.downsample is None for b in model.blocks()) > 0


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_give_identical_logits(depth):
    """Bit for bit: our blocks run torchvision's layers in torchvision's order (conv, BN, ReLU,
    the shortcut added before the last ReLU, adaptive average pooling, fc), so the same kernels
    sum in the same order on any CPU. (These untrained nets' logits reach 1e11 at depth 152: a
    tolerance would have to be exactness anyway.)"""
    tv = getattr(torchvision.models, f"resnet{depth}")()
    _randomise_bn(tv)
    ours = create_model(f"resnet{depth}", stride_in="3x3")
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(tv(x), ours(x))


def test_resnet1202_forward_backward():
    model = create_model("resnet1202")
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_preact_models():
    assert complexity(create_model("preact_resnet164")).params == 1_703_258  # paper: 1.7M
    assert complexity(create_model("preact_resnet1001")).params == 10_327_706  # paper: 10.2M
    m = create_model("preact_resnet110")
    assert isinstance(m.layer1[0], PreActBasicBlock) and m.bn1 is None and m.final_bn is not None
    assert isinstance(create_model("preact_resnet164").layer1[0], PreActBottleneck)


def test_list_and_generic_depths():
    names = list_models()
    for name in (
        "resnet18",
        "resnet152",
        "plain34",
        "resnet20",
        "resnet1202",
        "plain110",
        "preact_resnet1001",
    ):
        assert name in names
    assert list_models("plain*") == [n for n in names if n.startswith("plain")]
    assert len(create_model("resnet26").layer1) == 4  # any 6n+2 depth
    assert create_model("cifar_resnet50").stem_kind == "cifar"
    assert create_model("resnet50").stem_kind == "imagenet"
    assert not create_model("plain74").residual


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("resnet21", {}, "valid names"),
        ("resnet", {}, "valid names"),
        ("vgg16", {}, "valid names"),
        ("resnet20", {"shortcut": "D"}, "valid choices: A, B, C"),
        ("resnet50", {"stride_in": "2x2"}, "valid choices: '1x1', '3x3'"),
        ("resnet20", {"stride_in": "2x2"}, "valid choices: '1x1', '3x3'"),
        ("resnet20", {"dropout": 0.5}, "valid options"),
        ("plain20", {"shortcut": "A"}, "plain networks have no shortcuts"),
        ("plain20", {"zero_init_residual": True}, "plain network"),
        ("resnet20", {"block": "wide"}, "valid choices: 'basic', 'bottleneck'"),
        ("resnet26", {"block": "bottleneck"}, "9n\\+2"),
        ("resnet20", {"shortcut_pad": "middle"}, "valid choices: 'after', 'both'"),
        ("resnet20", {"num_classes": 0}, ">= 1"),
    ],
)
def test_invalid_names_and_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20", lambda **_: nn.Identity())
