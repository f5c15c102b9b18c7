"""Defaults and flag names the command line prints are the code's own.

Every ``(default X)`` in ``unetseg <command> --help`` equals the default of the config field the
flag sets (or the parser's default for a flag without a field), and every ``--flag`` that an
error message names is a flag of some ``unetseg`` command.
"""

import argparse
import ast
import re
from pathlib import Path

import pytest

import unetseg
from unetseg.cli import PREDICT_FLAGS, TRAIN_FLAGS, build_parser, main
from unetseg.cli.flags import field_default
from unetseg.config import PredictConfig, RunConfig

DEFAULT = re.compile(r"\(default (?P<value>[^:)][^)]*)\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])")
PREDICTING = ("predict", "evaluate", "serve", "export")


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help_blocks(text: str) -> dict[str, str]:
    """Option -> its help text, from argparse's --help output (wrapped lines joined)."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (?:-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line[match.end():]
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(help.split()) for flag, help in blocks.items()}


def _expected(command: str, flag: str, parser: argparse.ArgumentParser) -> object:
    if command in PREDICTING and flag in PREDICT_FLAGS:
        return field_default(PredictConfig, PREDICT_FLAGS[flag][0])
    if command not in PREDICTING and flag in TRAIN_FLAGS:
        return field_default(RunConfig, TRAIN_FLAGS[flag][0])
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.default


def _same(shown: str, value: object) -> bool:
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    if isinstance(value, bool | str) or value is None:
        return shown == str(value)
    try:
        return float(shown) == float(value)  # type: ignore[arg-type]
    except ValueError:
        return False


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_default_in_help_is_the_code_default(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    blocks = _help_blocks(capsys.readouterr().out)
    parser = _commands()[command]
    wrong = []
    for flag, text in blocks.items():
        for match in DEFAULT.finditer(text):
            expected = _expected(command, flag, parser)
            if not _same(match.group("value"), expected):
                wrong.append(f"{command} {flag}: help says {match.group(0)}, code {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_help_of_serve_tile_is_the_planned_tiling(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = _help_blocks(capsys.readouterr().out)["--tile"]
    assert "1088" in text and "512" not in text


def _all_flags() -> set[str]:
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    for parser in _commands().values():
        flags |= {s for a in parser._actions for s in a.option_strings}
    return flags


def _error_strings() -> list[tuple[str, str]]:
    """(where, text) of every string literal inside a raised UserError, ValueError, TypeError
    or ArgumentTypeError under src/unetseg."""
    found = []
    root = Path(unetseg.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in ("UserError", "ValueError", "TypeError", "ArgumentTypeError"):
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((f"{path.relative_to(root)}:{node.lineno}", part.value))
    return found


def test_every_flag_named_in_an_error_exists() -> None:
    flags = _all_flags()
    strings = _error_strings()
    assert len(strings) > 100  # the collector found the messages
    wrong = [f"{where}: {flag}" for where, text in strings for flag in FLAG.findall(text)
             if flag not in flags]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("change", "flag"), [
    ({"train.time_limit_s": -1.0}, "--time-limit"),
    ({"data.foreground_fraction": 2.0}, "--foreground-fraction"),
    ({"data.val_fraction": 1.5}, "--val-fraction"),
    ({"train.val_tile": 4}, "train.val_tile in a --config file"),
])
def test_config_errors_name_real_flags(change: dict, flag: str) -> None:
    from unetseg.config import check_run_config, replace
    from unetseg.errors import UserError

    with pytest.raises(UserError) as caught:
        check_run_config(replace(RunConfig(), **change))
    message = str(caught.value)
    assert message.endswith(f"({flag})")
    assert all(f in _all_flags() for f in FLAG.findall(message))


def test_architecture_flags_set_the_model_config() -> None:
    from unetseg.cli import run_config_from_args

    args = build_parser().parse_args([
        "train", "data", "--out", "run", "--arch", "nested", "--deep-supervision", "on",
        "--prune-level", "2", "--encoder-blocks", "3", "--encoder-weights", "r34.safetensors"])
    cfg = run_config_from_args(args)
    assert (cfg.model.arch, cfg.model.deep_supervision, cfg.model.prune_level,
            cfg.model.encoder_blocks) == ("nested", True, 2, 3)
    assert cfg.train.encoder_weights == "r34.safetensors"
    off = build_parser().parse_args(["train", "d", "--out", "r", "--deep-supervision", "off"])
    assert run_config_from_args(off).model.deep_supervision is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "d", "--out", "r", "--deep-supervision", "maybe"])
