"""One ``promptcam`` command with a verb per stage; the ``promptcam-*`` scripts are aliases of the same commands."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from helpers import run_cli
from promptcam.cli import COMMANDS, main

SCRIPTS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


def _load(target: str):  # noqa: ANN202
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def test_every_alias_is_a_verb_of_the_one_command() -> None:
    verbs = {target for target, _ in COMMANDS.values()}
    aliases = {name: target for name, target in SCRIPTS.items() if name != "promptcam"}
    assert SCRIPTS["promptcam"] == "promptcam.cli:main"
    assert set(aliases.values()) <= verbs, set(aliases.values()) - verbs
    for name, (target, _) in COMMANDS.items():
        assert main.get_command(None, name) is _load(target)  # type: ignore[arg-type]


def test_help_lists_verbs_and_run_groups_options_by_mode() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0 and all(verb in top.output for verb in COMMANDS)
    run = runner.invoke(main, ["run", "--help"])
    assert run.exit_code == 0
    headings = ["Model and engine:", "Classes and explanations:", "Files mode", "Stream mode (--source):",
                "Ray mode"]
    positions = [run.output.index(h) for h in headings]
    assert positions == sorted(positions)
    stream = run.output[positions[3]:positions[4]]
    assert "--every" in stream and "--stall-timeout" in stream and "--ray-actors" not in stream


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "clip.mp4", "--resume"], "--resume cannot be used in --source mode"),
    (["imgs", "--every", "2s"], "--every cannot be used in files mode"),
    (["imgs", "--ray", "--max-frames", "3"], "--max-frames cannot be used in --ray mode"),
    (["imgs", "--ray-actors", "3"], "--ray-actors cannot be used in files mode"),
    (["imgs", "--source", "0"], "either --source or file inputs"),
    ([], "no inputs"),
])
def test_options_of_another_mode_are_refused(tiny_export, args: list[str], message: str) -> None:
    result = run_cli("promptcam", "run", "--model", tiny_export, *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_bad_values_are_refused_by_the_shared_options(tiny_export) -> None:
    result = run_cli("promptcam-watch", "inbox", "--model", tiny_export, "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size" in result.stderr
