"""Networks: the reference MNIST-1D sizes, every layout, init strategies, and clear shape errors."""

from __future__ import annotations

import doctest

import pytest
import torch

from sounding.config import Params
from sounding.errors import BadInput
from sounding.models import nets
from sounding.models.factory import build_net, check_state_compatible, load_net, net_kwargs, save_net


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("arch", "expected"), [("linear", 410), ("mlp", 15_210), ("cnn", 5_210), ("rnn", 5_134)]
)
def test_defaults_are_the_published_reference_models(arch: str, expected: int) -> None:
    net = build_net(arch, (40,), 10, "sequence", **net_kwargs(Params(), arch))
    assert _count(net) == expected
    assert net(torch.zeros(3, 40)).shape == (3, 10)


@pytest.mark.parametrize("module", [nets.linear, nets.mlp, nets.cnn, nets.rnn, nets.gan])
def test_shape_doctests(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.parametrize(("shape", "layout"), [((40,), "sequence"), ((3, 40), "sequence"), ((8, 8), "image")])
@pytest.mark.parametrize("arch", ["linear", "mlp", "cnn", "rnn"])
def test_every_arch_takes_every_layout(arch: str, shape: tuple, layout: str) -> None:
    net = build_net(arch, shape, 4, layout, **net_kwargs(Params(), arch))
    out = net(torch.randn(5, *shape))
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    assert net.features(torch.randn(5, *shape)).shape[0] == 5


def test_cnn_picks_conv2d_for_images() -> None:
    assert isinstance(nets.CNN((8, 8), 10, layout="image").backbone.convs[0], torch.nn.Conv2d)
    assert isinstance(nets.CNN((40,), 10).backbone.convs[0], torch.nn.Conv1d)


def test_a_shape_the_cnn_cannot_take_is_a_clear_error() -> None:
    with pytest.raises(
        BadInput, match=r"cnn: kernels \[5, 5, 5\] with stride 2 do not fit inputs of shape \(6,\)"
    ):
        nets.CNN((6,), 10, kernels=(5, 5, 5))


@pytest.mark.parametrize("init", ["xavier", "kaiming", "orthogonal"])
def test_init_strategies_change_weights_and_zero_biases(init: str) -> None:
    torch.manual_seed(0)
    default = nets.MLP((40,), 10, depth=4)
    torch.manual_seed(0)
    other = nets.MLP((40,), 10, depth=4, init=init)
    assert not torch.equal(default.backbone.input.weight, other.backbone.input.weight)
    assert torch.count_nonzero(other.backbone.input.bias) == 0


def test_orthogonal_init_gives_orthogonal_hidden_weights() -> None:
    w = nets.MLP((40,), 10, depth=4, init="orthogonal").backbone.hidden[0].weight.detach()
    torch.testing.assert_close(w @ w.T / 2.0, torch.eye(100), atol=1e-4, rtol=0)


def test_residual_connections_add_the_input() -> None:
    plain = nets.mlp.MLPBackbone(4, 4, depth=3, residual=False, dropout=0.0)
    skip = nets.mlp.MLPBackbone(4, 4, depth=3, residual=True, dropout=0.0)
    skip.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4)
    h = torch.relu(plain.input(x))
    torch.testing.assert_close(skip(x) - plain(x), h)


def test_safetensors_round_trip_and_mismatch_names_tensors(tmp_path) -> None:
    net = build_net("cnn", (40,), 10, "sequence")
    config = {"arch": "cnn", "input_shape": [40], "num_classes": 10, "layout": "sequence", "net": {}}
    save_net(net, config, tmp_path)
    loaded, _ = load_net(tmp_path / "model.safetensors", tmp_path / "config.json")
    x = torch.randn(2, 40)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    mlp = build_net("mlp", (40,), 10, "sequence")
    with pytest.raises(BadInput, match=r"does not fit a MLP: .*missing backbone\.input\.weight"):
        check_state_compatible(mlp, net.state_dict(), "cnn.safetensors")
    wider = build_net("cnn", (40,), 10, "sequence", channels=8)
    with pytest.raises(
        BadInput, match=r"backbone\.convs\.0\.weight: file has \(25, 1, 5\), model expects \(8, 1, 5\)"
    ):
        check_state_compatible(wider, net.state_dict(), "cnn.safetensors")


def test_a_pickle_is_not_a_safetensors_file(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    config = {"arch": "cnn", "input_shape": [40], "num_classes": 10, "layout": "sequence", "net": {}}
    with pytest.raises(BadInput, match="not a readable safetensors file"):
        load_net(tmp_path / "model.safetensors", config)
    assert not marker.exists()
