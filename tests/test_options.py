"""Options declared once (lungscope.options) and the flags made from them (lungscope.cli.flags)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import lungscope
from lungscope.cli import main
from lungscope.cli.flags import add_config_flags, config_overrides
from lungscope.errors import ConfigError
from lungscope.options import AT_LEAST_ONE, FRACTION, POSITIVE, Range, check_options, choices_of, option
from lungscope.training import TrainConfig
from lungscope.training.head import HeadConfig
from lungscope.training.tune import DEFAULT_SPACE


@dataclass
class _Config:
    rate: float = option(0.5, range=POSITIVE, help="a rate")
    kind: str = option("a", choices=("a", "b"), help="a kind")
    sizes: list[int] = option(default_factory=lambda: [4, 2], range=AT_LEAST_ONE, metavar="N", help="sizes")
    limit: int | None = option(None, range=AT_LEAST_ONE, help="a limit")
    fast: bool = option(False, help="go fast")
    mode: str = option("none", flag="--switched", const="on", help="switch the mode on")

    def __post_init__(self) -> None:
        check_options(self)


def test_choices_are_read_from_the_declaration() -> None:
    assert choices_of(_Config, "kind") == ("a", "b")
    assert choices_of(_Config, "rate") == ()
    assert DEFAULT_SPACE["optimizer"] == list(choices_of(TrainConfig, "optimizer")) == ["adam", "sgd"]


def test_ranges_read_as_they_check() -> None:
    ranges = (POSITIVE, AT_LEAST_ONE, FRACTION, Range(0, 1), Range(0.5, low_included=False), Range(high=2))
    assert [str(r) for r in ranges] == ["positive", "at least 1", "in [0, 1)", "in [0, 1]", "above 0.5", "at most 2"]
    assert 0 not in POSITIVE and 1e-9 in POSITIVE
    assert 0 in FRACTION and 1 not in FRACTION and 1 in Range(0, 1)
    for open_ended in (Range(), POSITIVE, Range(high=2)):  # no option asks for NaN or infinity (lr inf trained NaNs)
        assert 1 in open_ended and all(value not in open_ended for value in (math.inf, -math.inf, math.nan))


@pytest.mark.parametrize(("values", "message"), [
    ({"rate": 0}, "rate must be positive, not 0"),
    ({"rate": "x"}, "config key 'rate' must be a number, not 'x'"),
    ({"kind": "c"}, "kind must be one of a, b, not 'c'"),
    ({"sizes": [4, 0]}, "sizes must be at least 1, not 0"),
    ({"sizes": [4, 1.5]}, "config key 'sizes' must be a list, not [4, 1.5]"),
    ({"limit": 0}, "limit must be at least 1, not 0"),
])
def test_declarations_check_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _Config(**values)  # type: ignore[arg-type]
    assert str(error.value) == message
    assert _Config(limit=None, sizes=[]).limit is None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Config, skip={"kind"})
    return parser.parse_args(argv)


def test_flags_come_from_the_declarations() -> None:
    assert config_overrides(_parse([])) == {}
    given = config_overrides(_parse(["--rate", "2", "--sizes", "3", "--limit", "none", "--fast", "--switched"]))
    assert given == {"rate": 2.0, "sizes": [3], "limit": None, "fast": True, "mode": "on"}
    assert config_overrides(_parse(["--no-fast", "--sizes"])) == {"fast": False, "sizes": []}
    with pytest.raises(SystemExit):
        _parse(["--kind", "a"])  # skipped


def test_help_shows_the_dataclass_default() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Config)
    text = " ".join(parser.format_help().split())
    assert "--rate RATE a rate (default: 0.5)" in text
    assert "--kind {a,b} a kind (default: a)" in text
    assert "--sizes [N ...] sizes (default: 4 2)" in text
    assert "--fast, --no-fast go fast (default: off)" in text
    assert "--switched switch the mode on" in text and "on (default" not in text  # a switch: no default shown


def test_train_help_shows_trainconfig_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--epochs EPOCHS epochs to train (default: {TrainConfig.epochs})" in text
    assert f"--lr LR learning rate (default: {TrainConfig.lr})" in text
    assert "--labels {binary,three-class,tb}" in text and "--weighted-sampler" in text
    with pytest.raises(SystemExit):
        main(["train-head", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--patience PATIENCE stop after this many epochs without a lower validation loss (default: " \
           f"{HeadConfig.patience})" in text


def test_train_flags_override_the_config(tmp_path: Path) -> None:
    from lungscope.cli import build_parser
    from lungscope.cli.training import train_config

    path = tmp_path / "c.yaml"
    path.write_text("data: d\npretrained: imagenet\nclahe: true\nepochs: 3\n")
    argv = ["train", "--config", str(path), "--out", "o", "--pretrained", "none", "--no-clahe", "--class-weights",
            "--weighted-sampler", "--image-size", "64"]
    config = train_config(build_parser().parse_args(argv))
    assert (config.pretrained, config.clahe, config.class_weights, config.sampler) == (None, False, True, "weighted")
    assert (config.image_size, config.epochs, config.out) == (64, 3, "o")


@pytest.mark.parametrize(("source", "message"), [
    ("yaml", "lr must be positive, not -0.1"),
    ("flag", "lr must be positive, not -0.1"),
    ("head", "dropout must be in [0, 1), not 1.5"),
])
def test_a_range_violation_is_one_line(source: str, message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nlr: -0.1\n")
    argv = {"yaml": ["train", "--config", str(path)], "flag": ["train", "--data", "d", "--lr", "-0.1"],
            "head": ["train-head", "f.parquet", "--dropout", "1.5"]}[source]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    verb = argv[0]
    assert capsys.readouterr().err == f"lungscope {verb}: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_building_the_parser_imports_no_torch() -> None:
    """The flags made from TrainConfig and HeadConfig (whose modules import torch) wait for their verb."""
    code = ("import sys\nfrom lungscope.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lungscope.training')))")
    env = {**os.environ, "PYTHONPATH": str(Path(lungscope.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
