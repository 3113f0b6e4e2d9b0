"""Build networks from params and a data spec; save and load them as safetensors + JSON (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sounding.config import ARCHS, Params
from sounding.errors import BadInput
from sounding.files import atomic_write, write_json


def net_kwargs(params: Params, arch: str) -> dict[str, Any]:
    """The architecture's hyperparameters from params, as plain constructor arguments."""
    if arch not in ARCHS:
        raise BadInput(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    return getattr(params.models, arch).model_dump(mode="json")


def build_net(
    arch: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    layout: str,
    standardize: str = "none",
    **kwargs: Any,
) -> nn.Module:
    """Instantiate the network ``arch`` for inputs of ``input_shape`` (one sample) and ``layout``, with a
    ``Standardize`` layer of mode ``standardize`` in front (``none``: none; its statistics are fitted by
    ``net.scaler.fit(x_train)``)."""
    from sounding.models import nets
    from sounding.models.nets.base import Standardize

    if arch == "linear":
        net = nets.Linear(input_shape, num_classes)
    elif arch == "mlp":
        net = nets.MLP(input_shape, num_classes, **kwargs)
    elif arch == "cnn":
        net = nets.CNN(input_shape, num_classes, layout=layout, **kwargs)
    elif arch == "rnn":
        net = nets.RNN(input_shape, num_classes, layout=layout, **kwargs)
    elif arch == "fcn":
        net = nets.FCN(input_shape, num_classes, layout=layout, **kwargs)
    else:
        raise BadInput(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    if standardize != "none":
        net.scaler = Standardize(standardize, input_shape, layout)
    return net


def save_net(net: nn.Module, config: dict[str, Any], out_dir: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` (everything ``load_net`` needs to rebuild it)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json(out_dir / "config.json", config)


def load_net(weights: str | Path, config: str | Path | dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network from safetensors weights and its JSON config. Never unpickles.

    Raises ``BadInput`` naming the file, or the mismatching tensors when the weights belong to another
    architecture or shape.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(config, dict):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"{config}: cannot read the model config ({exc})") from exc
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError, ValueError) as exc:
        raise BadInput(
            f"{weights}: not a readable safetensors file ({exc}); pickled files are refused"
        ) from exc
    return net_from_state(state, config, str(weights)), config


def net_from_state(state: dict, config: dict[str, Any], source: str) -> nn.Module:
    """The network ``config`` describes, holding the tensors of ``state`` (in eval mode).

    Raises ``BadInput`` when the config is incomplete or the tensors do not fit (naming them).
    """
    try:
        net = build_net(
            config["arch"],
            tuple(config["input_shape"]),
            int(config["num_classes"]),
            config["layout"],
            **config.get("net", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(
            f"model config is incomplete or invalid ({exc}); expected arch, input_shape, "
            "num_classes, layout and net"
        ) from exc
    check_state_compatible(net, state, source)
    broken = sum(int((~torch.isfinite(t)).sum()) for t in state.values() if t.is_floating_point())
    if broken:
        raise BadInput(
            f"{source}: {broken} weights are NaN or infinite (a corrupted file, or a model that diverged): "
            "it would predict NaN"
        )
    net.load_state_dict(state)
    return net.eval()


def check_state_compatible(net: nn.Module, state: dict, source: str) -> None:
    """Raise ``BadInput`` listing missing, unexpected and wrongly shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected.keys() - given.keys()]
    problems += [f"unexpected {k} {given[k]}" for k in given.keys() - expected.keys()]
    problems += [
        f"{k}: file has {given[k]}, model expects {expected[k]}"
        for k in expected.keys() & given.keys()
        if expected[k] != given[k]
    ]
    if problems:
        listed = "; ".join(sorted(problems)[:12])
        raise BadInput(f"{source} does not fit a {type(net).__name__}: {listed}")
