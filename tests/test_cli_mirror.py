"""The command line and the Python API mirror each other.

Every ``train`` flag sets a RunConfig field and every field has a flag; every keyword of
``fit``, ``predict`` and ``evaluate`` has a flag of its command and every flag a keyword or
field; the few differences are listed, with reasons, in ``unetseg.cli.MIRROR_EXCEPTIONS``.
"""

import argparse
import dataclasses
import inspect
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import unetseg
from unetseg.cli import MIRROR_EXCEPTIONS, PREDICT_FLAGS, TRAIN_FLAGS, build_parser
from unetseg.cli.flags import SECTIONS, field_of
from unetseg.config import FLAG_NAMES, PredictConfig, RunConfig, flag_hint

FUNCTIONS: dict[str, tuple[str, str]] = {  # function -> (command, module)
    "fit": ("train", "unetseg.train.fit"),
    "predict": ("predict", "unetseg.api"),
    "evaluate": ("evaluate", "unetseg.api"),
}


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {
        "--help"}


def _positionals(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if not a.option_strings}


def _function(name: str) -> Callable[..., Any]:
    return getattr(__import__(FUNCTIONS[name][1], fromlist=[name]), name)


def _run_fields() -> list[str]:
    return [f"{section}.{f.name}" for section in SECTIONS
            for f in dataclasses.fields(SECTIONS[section])]


def test_every_train_flag_sets_a_field_and_every_field_has_a_flag() -> None:
    for key, _, _ in TRAIN_FLAGS.values():
        field_of(RunConfig, key)  # raises for a field that does not exist
    bound = {key for key, _, _ in TRAIN_FLAGS.values()}
    missing = [key for key in _run_fields() if key not in bound and key not in MIRROR_EXCEPTIONS]
    assert not missing, f"RunConfig fields without a train flag: {missing}"
    stale = [key for key in _run_fields() if key in bound and key in MIRROR_EXCEPTIONS]
    assert not stale, f"listed as exceptions but they have flags: {stale}"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_keyword_has_a_flag_and_every_flag_a_keyword(name: str) -> None:
    command = FUNCTIONS[name][0]
    parser = _command(command)
    options, positionals = _options(parser), _positionals(parser)
    params = inspect.signature(_function(name)).parameters
    keywords = [p for p in params.values() if p.kind is not p.VAR_KEYWORD]
    wrong = []
    for p in keywords:
        has_flag = p.name in positionals or "--" + p.name.replace("_", "-") in options
        listed = f"{name}:{p.name}" in MIRROR_EXCEPTIONS
        if has_flag == listed:
            wrong.append(f"{name}:{p.name} " + ("has a flag and is listed" if has_flag
                                                else "has no flag and is not listed"))
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # **options: PredictConfig fields
        wrong += [f"{command} lacks {flag}" for flag in PREDICT_FLAGS if flag not in options]
    names = {"--" + p.name.replace("_", "-") for p in keywords}
    table = TRAIN_FLAGS if command == "train" else PREDICT_FLAGS
    for flag in sorted(options - names - set(table)):
        if f"{command} {flag}" not in MIRROR_EXCEPTIONS:
            wrong.append(f"{command} {flag} has no keyword or field and is not listed")
    assert not wrong, "\n".join(wrong)


def test_every_exception_is_still_needed() -> None:
    fields = set(_run_fields())
    stale = []
    for key in MIRROR_EXCEPTIONS:
        if " " in key:
            command, flag = key.split(" ")
            ok = flag in _options(_command(command))
        elif ":" in key:
            name, keyword = key.split(":")
            ok = keyword in inspect.signature(_function(name)).parameters
        else:
            ok = key in fields
        if not ok:
            stale.append(key)
    assert not stale, f"exceptions naming nothing: {stale}"
    assert all(reason.strip() for reason in MIRROR_EXCEPTIONS.values())


def test_config_errors_point_at_the_flag_of_their_field() -> None:
    train = _options(_command("train"))
    bound = {key: flag for flag, (key, _, _) in TRAIN_FLAGS.items()}
    for key in _run_fields():
        hint = flag_hint(key)
        if key in bound:
            assert hint == bound[key], f"{key}: errors say {hint}, the flag is {bound[key]}"
        elif key in FLAG_NAMES:
            assert hint.endswith("in a --config file") and key in MIRROR_EXCEPTIONS
    assert all(flag is None or flag in train for flag in FLAG_NAMES.values())


def test_prediction_flags_are_the_fields_of_predict_config() -> None:
    assert sorted(key for key, _, _ in PREDICT_FLAGS.values()) == sorted(
        f.name for f in dataclasses.fields(PredictConfig))


@pytest.mark.parametrize("name", ["fit", "predict", "evaluate", "demo", "export_model",
                                  "run_server", "create_app", "preview_augment",
                                  "preview_weights", "check_data", "convert_checkpoint",
                                  "PredictConfig", "RunConfig", "load_model"])
def test_every_command_is_reachable_from_the_top_level_namespace(name: str) -> None:
    assert name in unetseg.__all__
    assert callable(getattr(unetseg, name))


def test_import_unetseg_does_not_import_torch() -> None:
    code = ("import sys, unetseg; unetseg.__all__;"
            " assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
