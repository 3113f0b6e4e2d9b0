"""Params: the YAML validates, errors read well, and dvc.yaml only names real keys and commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sounding.config import Params, load_params, parse_overrides
from sounding.errors import BadInput
from tests.conftest import REPO, cli_options, run_dvc


def test_params_yaml_is_the_documented_defaults() -> None:
    assert load_params(REPO / "params.yaml") == Params()


def test_params_are_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        Params().seed = 1


def test_overrides_parse_yaml_values() -> None:
    assert parse_overrides(["train.lr=0.1", "train.archs=[cnn, mlp]", "data.mnist1d.shuffle_seq=true"]) == {
        "train.lr": 0.1,
        "train.archs": ["cnn", "mlp"],
        "data.mnist1d.shuffle_seq": True,
    }
    params = Params().with_overrides(["train.lr=0.1", "train.archs=[cnn]"])
    assert params.train.lr == 0.1 and params.train.archs == ["cnn"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.val_fraction=2", r"data\.val_fraction: Input should be less than 1 \(got 2\)"),
        ("data.val_fractoin=0.2", r"data\.val_fractoin: unknown key; did you mean 'data\.val_fraction'\?"),
        ("trian.lr=0.1", r"trian: unknown key; did you mean 'train'\?"),
        (
            "models.mlp.init=zeros",
            r"models\.mlp\.init: Input should be 'default', 'xavier', 'kaiming' or "
            r"'orthogonal' \(got 'zeros'\)",
        ),
        ("train.epochs=ten", r"train\.epochs: Input should be a valid integer.*\(got 'ten'\)"),
        ("compute.devices=0", r"compute\.devices: Input should be greater than 0 or Input should be 'auto'"),
        ("train.archs=[cnn, cnn]", r"train\.archs: each architecture may appear once"),
        (
            "train.archs=[cnn, gan9]",
            r"train\.archs\.1: Input should be 'linear', 'mlp', 'cnn', 'rnn' or 'fcn'",
        ),
        ("models.mlp.dropout=-0.1", r"models\.mlp\.dropout: Input should be greater than or equal to 0"),
        ("gan.ema=1", r"gan\.ema: Input should be less than 1 \(got 1\)"),
        ("gan.channels=1", r"gan\.channels: Input should be greater than or equal to 2 \(got 1\)"),
        (
            "train.archs=[fcn]",
            r"- gan\.judge is 'cnn', which train\.archs \(fcn\) does not train; set gan\.judge to one of them$",
        ),
        (
            "models.fcn.kernels=[3]",
            r"models\.fcn: channels \(3 blocks\) and kernels \(1\) must have the same length",
        ),
    ],
)
def test_bad_params_name_key_value_and_what_is_allowed(override: str, expected: str) -> None:
    with pytest.raises(BadInput, match=expected):
        Params().with_overrides([override])


def test_every_problem_is_reported_at_once(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: x\ntrain:\n  lr: -1\n  epoch: 3\n")
    with pytest.raises(BadInput) as info:
        load_params(path)
    message = str(info.value)
    assert "seed:" in message and "train.lr:" in message and "did you mean 'train.epochs'" in message


def test_malformed_override_and_missing_file() -> None:
    with pytest.raises(BadInput, match="must look like key.path=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(BadInput, match="not found"):
        load_params("nowhere.yaml")


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _expand(stage: dict) -> list[dict]:
    if "foreach" not in stage:
        return [stage]
    items = Params().train.archs
    body = yaml.safe_dump(stage["do"])
    return [yaml.safe_load(body.replace("${item}", item)) for item in items]


def test_every_dvc_params_key_exists_in_params() -> None:
    tree = Params().model_dump(mode="json")
    for stage in _dvc_stages().values():
        for body in _expand(stage):
            for key in body.get("params", []):
                node = tree
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"dvc.yaml names unknown param {key}"
                    node = node[part]


def test_every_dvc_cmd_is_a_real_cli_command_and_writes_its_outs() -> None:
    commands = cli_options()
    for name, stage in _dvc_stages().items():
        for body in _expand(stage):
            argv = body["cmd"].split()
            assert argv[0] == "sounding" and argv[1] == name, f"stage {name} must call `sounding {name}`"
            for flag in (a for a in argv if a.startswith("--")):
                assert flag in commands[name], f"{name}: unknown option {flag}"
            outs = [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]
            outs += [next(iter(m)) for m in body.get("metrics", [])]
            for out in outs:  # each out is passed, itself or as the folder the command writes it into
                assert any(out == a or out.startswith(a + "/") for a in argv), (
                    f"stage {name}: {out} not passed"
                )


def test_dvc_deps_name_existing_code() -> None:
    for stage in _dvc_stages().values():
        for body in _expand(stage):
            for dep in body.get("deps", []):
                if re.match(r"^src/", dep):
                    assert (REPO / dep).exists(), dep


def test_python_bytecode_beside_the_code_leaves_a_stage_up_to_date(tmp_path: Path) -> None:
    """A stage's code deps are folders of Python: importing them writes ``__pycache__`` there (on any
    machine without PYTHONDONTWRITEBYTECODE), which must not enter what DVC records, or a fresh clone (no
    bytecode) or another Python would find the stage changed."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "step.py").write_text("VALUE = 1\n")
    (tmp_path / "dvc.yaml").write_text(
        'stages:\n  step:\n    cmd: python -c \'import step; open("out.txt", "w").write(str(step.VALUE))\'\n'
        "    deps: [code]\n    outs: [out.txt]\n"
    )
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tmp_path / "code")
    for args in (["init", "-q"], ["repro"]):
        done = run_dvc(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
    bytecode = tmp_path / "code" / "__pycache__"
    assert list(bytecode.glob("step.*.pyc"))  # the case this is about
    shutil.rmtree(bytecode)  # as in a fresh clone of what this run recorded, or under another Python
    status = run_dvc("status", cwd=tmp_path)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout


def test_every_param_is_described_and_the_reference_page_is_generated_from_the_code() -> None:
    from sounding.config import Section
    from sounding.params_doc import markdown

    def undescribed(model: type, prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
                missing += undescribed(field.annotation, f"{prefix}{name}.")
        return missing

    assert undescribed(Params) == []
    page = (REPO / "docs" / "params.md").read_text()
    assert page == markdown(), "docs/params.md is stale: sounding params --markdown > docs/params.md"
    assert "| `train.select` | `auto` | Which epoch's weights are tested and shipped" in page
