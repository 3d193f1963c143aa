"""One ``promptcam`` command with a verb per stage; the ``promptcam-*`` scripts are aliases of the same commands."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner

from helpers import run_cli
from promptcam.cli import COMMANDS, main
from promptcam.runtime.backends import ENGINES

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


def _verb(name: str) -> click.Command:
    """The command of a verb, from ``COMMANDS``; skipped when an optional package it needs is missing."""
    try:
        return _load(COMMANDS[name][0])
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "promptcam":  # a broken import of our own: a failure, not a skip
            raise
        pytest.skip(f"'promptcam {name}' needs {exc.name}, which is not installed")


def _leaves(command: click.Command) -> Iterator[tuple[str, click.Command]]:
    """A verb's commands that run (a group's subcommands, e.g. ``review serve``)."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from ((f"{name} {n}".strip(), c) for n, c in _leaves(sub))
    else:
        yield "", command


def _parse(command: click.Command, args: list[str]) -> dict:
    with command.make_context("promptcam", list(args)) as ctx:  # a copy: click consumes the list
        return dict(ctx.params)


def _spelled(option: str, text: str) -> bool:
    """Whether ``option`` appears in ``text`` as itself (``--batch`` is not in ``--batch-size``, ``--trt-batch``)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize(("verb", "base", "old", "new"), [
    ("export", ["--ckpt", "model.pt"], ["--batch", "4"], ["--batch-size", "4"]),
    ("export", ["--ckpt", "model.pt"], ["--batch=2"], ["--batch-size=2"]),
    ("export", ["--ckpt", "model.pt"], ["--engine", "trt"], ["--target", "trt"]),
    ("bench", [], ["--batch", "1,2"], ["--batch-size", "1,2"]),
])
def test_old_spellings_still_work_with_a_warning(verb: str, base: list[str], old: list[str], new: list[str],
                                                 capsys) -> None:
    command = _verb(verb)
    old_name, new_name = old[0].split("=")[0], new[0].split("=")[0]
    want = _parse(command, [*base, *new])
    assert capsys.readouterr().err == ""
    assert want != _parse(command, base), "the test value must differ from the default"
    capsys.readouterr()
    assert _parse(command, [*base, *old]) == want  # the same parameters reach the command
    assert capsys.readouterr().err == f"warning: {old_name} is deprecated; use {new_name}\n"
    help_text = CliRunner().invoke(main, [verb, "--help"]).output
    assert _spelled(new_name, help_text) and not _spelled(old_name, help_text)  # hidden from --help
    with pytest.raises(click.UsageError, match=f"give only {new_name}"):
        _parse(command, [*base, *old, *new])


def test_old_spelling_reaches_the_command_body() -> None:
    """Through the ``promptcam`` command: the warning, then the command runs with the value (here: refuses it)."""
    result = CliRunner().invoke(main, ["export", "--ckpt", "model.pt", "--batch", "four"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == ["warning: --batch is deprecated; use --batch-size",
                                          "error: --batch-size must be 'dynamic' or a positive integer, got 'four'"]


# the spelling of each shared option, by parameter name (bench's --batch-size is a list: its parameter is ``batches``)
SPELLINGS = {"engine": "--engine", "batch_size": "--batch-size", "top_k": "--top-k", "threads": "--threads",
             "verbose": "--verbose"}


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_spells_shared_options_the_same(verb: str) -> None:
    for name, command in _leaves(_verb(verb)):
        where = f"promptcam {verb} {name}".strip()
        visible = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        spellings = {o: p for p in visible for o in [*p.opts, *p.secondary_opts]}
        verbose = spellings.get("--verbose")
        assert verbose is not None and verbose.is_flag, f"{where}: no --verbose flag"
        assert "--batch" not in spellings, f"{where}: --batch (spell it --batch-size)"
        for param in visible:
            if param.name in SPELLINGS:
                assert SPELLINGS[param.name] in param.opts, f"{where}: {param.opts} (spell it {SPELLINGS[param.name]})"
            if param.name == "threads":
                assert isinstance(param.type, click.IntRange) and param.type.min == 1, f"{where}: --threads >= 1"
        engine = spellings.get("--engine")
        if engine is not None:  # the runtime engine (export's artifact is --target)
            assert isinstance(engine.type, click.Choice) and tuple(engine.type.choices) == ENGINES, \
                f"{where}: --engine must be one of promptcam.runtime.backends.ENGINES"
