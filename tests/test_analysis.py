"""Analyses with known answers: Fig. 7 hooks, lesions of zero branches, gated gradient paths,
shattered gradients of linear and deep nets; and each `reslab analyze` kind end to end."""

from __future__ import annotations

import json

import pytest
import torch

from reslab.analysis import gradients, lesion, responses, shattered
from reslab.cli import main
from reslab.models import create_model


def test_response_hooks_capture_the_branch_layers():
    model = create_model("resnet20")
    names = [n for n, _ in responses.response_layers(model)]
    assert len(names) == 2 * len(model.blocks()) == 18  # two 3x3 layers per basic block
    assert names[:2] == ["layer1.0.bn1", "layer1.0.bn2"]
    preact = create_model("preact_resnet164")
    assert len(responses.response_layers(preact)) == 3 * len(preact.blocks()) == 162
    # the accumulated std equals the std of the captured outputs computed directly
    model.eval()
    x = torch.randn(16, 3, 32, 32)
    captured = {}
    bn = dict(responses.response_layers(model))["layer2.1.bn2"]
    handle = bn.register_forward_hook(
        lambda m, i, o: captured.setdefault("out", o.detach().clone())
    )
    std = responses.layer_responses(model, [(x[:8], None), (x[8:], None)])
    handle.remove()
    model(x)
    assert std[names.index("layer2.1.bn2")] == pytest.approx(
        captured["out"].double().std(unbiased=False).item(), rel=1e-4
    )


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet110"])
def test_deleting_zero_initialised_blocks_changes_nothing(name):
    model = create_model(name, zero_init_residual=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        for block in model.blocks():
            with lesion.deleted([block]):
                torch.testing.assert_close(model(x), reference)
        with lesion.deleted(model.blocks()):
            torch.testing.assert_close(model(x), reference)
        assert torch.equal(model(x), reference)  # restored


def test_deleting_a_plain_layer_breaks_the_net_and_swaps_restore():
    model = create_model("plain20").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with lesion.deleted([model.layer2[1]]):
            assert not torch.allclose(model(x), reference)
        with lesion.swapped(model, [("layer1", 0, 2)]):
            assert model.layer1[0] is not None and not torch.allclose(model(x), reference)
        torch.testing.assert_close(model(x), reference)


def test_gated_gradients_keep_the_forward_and_split_the_paths():
    model = create_model("resnet8").eval()  # 3 blocks: 8 paths
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.no_grad():
        reference = model(x)
    n = len(model.blocks())
    total = None
    for mask in range(2**n):  # summing the gradients of all 2^n path sets gives the full gradient
        chosen = {i for i in range(n) if mask >> i & 1}
        xi = x.clone().requires_grad_(True)
        with gradients.gated(model, chosen):
            out = model(xi)
            torch.testing.assert_close(out, reference)
            torch.nn.functional.cross_entropy(out, y).backward()
        total = xi.grad if total is None else total + xi.grad
    xf = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(xf), y).backward()
    # exact for the linearised (fixed ReLU masks) network; ReLU after the addition keeps masks fixed
    torch.testing.assert_close(total, xf.grad, rtol=1e-3, atol=1e-6)


def test_spread_of_k_values():
    assert lesion.spread(1, 5, 12) == [1, 2, 3, 4, 5]
    ks = lesion.spread(1, 25, 12)
    assert ks[0] == 1 and ks[-1] == 25 and len(ks) == 12


def test_effective_range():
    rows = [{"share": s} for s in (0.0, 0.05, 0.2, 0.5, 0.2, 0.05)]
    assert gradients.effective_range(rows, 0.85) == (2, 4)
    assert gradients.effective_range(rows, 0.97) == (1, 5)


def test_linear_network_gradient_correlation_is_one():
    xs = torch.linspace(-2, 2, 64)[:, None]
    for kind in ("plain", "residual"):
        torch.manual_seed(0)
        grads = shattered.sweep_gradients(
            shattered.FCNet(8, kind, width=32, linear=True), xs, train=True
        )
        assert shattered.neighbour_correlation(grads) == pytest.approx(1.0, abs=1e-9)


def test_plain_nets_shatter_faster_than_residual_twins():
    fc = shattered.fc_correlations([1, 16], kinds=("plain_bn", "residual_bn"), seeds=3, points=128)
    assert fc["plain_bn"][1] < fc["residual_bn"][1] - 0.2  # at depth 16
    assert fc["plain_bn"][1] < fc["plain_bn"][0] and fc["residual_bn"][1] < fc["residual_bn"][0]


@pytest.mark.parametrize("kind", ["responses", "lesion", "gradients", "shattered"])
def test_analyze_cli_writes_json_plot_and_summary(kind, data_dir, tmp_path, capsys):
    models = (
        ["--model", "resnet8"] if kind == "lesion" else ["--model", "plain8", "--model", "resnet8"]
    )
    assert (
        main(
            [
                "analyze",
                kind,
                *models,
                "--data-dir",
                str(data_dir),
                "--limit",
                "40",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    for suffix in ("json", "png", "txt"):
        assert (tmp_path / f"{kind}.{suffix}").stat().st_size > 0
    record = json.loads((tmp_path / f"{kind}.json").read_text())
    assert record["limit"] == 40
    if kind == "lesion":
        assert {"baseline_error", "single_block", "k_deleted"} <= set(record)
        assert [b["downsampling"] for b in record["single_block"]] == [False, True, True]
        assert record["k_deleted"][0]["k"] == 1


def test_analyze_cli_errors(capsys, tmp_path):
    assert main(["analyze", "lesion", "--model", "resnet50", "--out", str(tmp_path)]) == 2
    assert "CIFAR-family" in capsys.readouterr().err
    assert (
        main(
            [
                "analyze",
                "responses",
                "--model",
                "resnet8",
                "--model",
                "plain8",
                "--weights",
                "x",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "one per model" in capsys.readouterr().err


def test_weights_from_a_plain_state_dict(tmp_path):
    from reslab.models.factory import load_model

    source = create_model("resnet8", zero_init_residual=True)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    loaded = load_model("resnet8", tmp_path / "weights.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="does not hold resnet20 weights"):
        load_model("resnet20", tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("resnet8", tmp_path / "missing.pt")


def test_gradient_analyses_leave_the_model_as_they_found_it():
    """block_gradient_norms runs in training mode (BN by the batch), path_gradients in eval mode:
    neither changes the BN statistics, the mode or the gradients, so the order of calls does not
    change the results."""
    model = create_model("resnet8").eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths_first = gradients.path_gradients(model, x, y, samples=1)
    norms = gradients.block_gradient_norms(model, x, y)
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert gradients.path_gradients(model, x, y, samples=1) == paths_first
    assert gradients.block_gradient_norms(model, x, y) == norms


def test_a_deleted_branch_is_not_computed():
    model = create_model("resnet20").eval()
    block = model.layer2[0]  # a down-sampling block: its shortcut still runs
    calls = []
    block.conv1.register_forward_hook(lambda *a: calls.append("conv1"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), lesion.deleted([block]):
        out = model(x)
    assert calls == [] and out.shape == (2, 10)
    with torch.no_grad():
        model(x)
    assert calls == ["conv1"]
