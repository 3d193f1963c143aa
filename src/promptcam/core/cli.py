"""Shared command-line plumbing.

- ``run_cli``: a ``PromptCamError`` becomes one clear ``error: ...`` line and exit code 1.
- ``option_group``: options declared once and reused by every command that needs them.
- ``verbose_option``: ``--verbose`` (tracebacks), the same in every verb; ``deprecated_alias``: an old
  spelling of an option that still works, with a warning, hidden from ``--help``.
- ``GroupedCommand``: ``--help`` lists options under headings (files / stream / Ray ...).
- ``LazyGroup``: the ``promptcam`` command imports a subcommand only when it runs, so ``promptcam run``
  works on a field station without torch.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from .errors import PromptCamError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def run_cli(body: Callable[[], object], *, verbose: bool = False) -> None:
    """Run a command body; a ``PromptCamError`` becomes ``error: ...`` and exit code 1."""
    try:
        body()
    except PromptCamError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def option_group(section: str, *options: Decorator) -> Decorator:
    """Apply ``options`` (``click.option(...)`` decorators) and file them under ``section`` in ``--help``."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        sections = getattr(func, "__click_sections__", {})
        for param in getattr(func, "__click_params__", [])[-len(options):]:
            sections.setdefault(param.name, section)
        func.__click_sections__ = sections  # type: ignore[attr-defined]
        return func

    return apply


verbose_option = click.option("--verbose", is_flag=True, help="Show tracebacks.")


class DeprecatedAlias(click.Option):
    """A hidden old spelling of another option of the same command (``deprecated_alias``).

    Its value is handed to the option spelled ``new``, as if given there (that option's type checks
    it), after a warning on stderr. It is processed before that option whenever it is given (click
    handles the options given on the command line first), so the value is in place in time.
    """

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, hidden=True, expose_value=False, **kwargs)
        self.new = new

    def handle_parse_result(self, ctx: click.Context, opts: Any, args: list[str]) -> tuple[Any, list[str]]:
        if self.name in opts:
            old = self.opts[0]
            target = next((p for p in ctx.command.params if self.new in getattr(p, "opts", ())), None)
            if target is None or target.name is None:
                raise RuntimeError(f"deprecated alias {old}: the command has no option {self.new}")
            if target.name in opts:
                raise click.UsageError(f"{old} is the deprecated spelling of {self.new}; give only {self.new}", ctx)
            click.echo(f"warning: {old} is deprecated; use {self.new}", err=True)
            opts[target.name] = opts[self.name]
        return super().handle_parse_result(ctx, opts, args)


def deprecated_alias(old: str, new: str) -> Decorator:
    """Keep ``old`` (e.g. ``--batch``) working as a hidden, deprecated spelling of the option ``new``.

    ``@deprecated_alias("--batch", "--batch-size")`` next to the ``--batch-size`` option: ``--batch 4``
    prints ``warning: --batch is deprecated; use --batch-size`` and sets ``--batch-size`` to 4.
    For options that take a value (not flags).
    """
    return click.option(old, f"deprecated_{old.lstrip('-').replace('-', '_')}", cls=DeprecatedAlias, new=new)


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists options by section (see ``option_group``), in declaration order."""

    def __init__(self, *args: Any, sections: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections or getattr(self.callback, "__click_sections__", {})

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        grouped: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                grouped.setdefault(self.sections.get(param.name or "", "Other options"), []).append(record)
        grouped["Other options"] = grouped.pop("Other options", [])  # --verbose, --help: last
        for title, rows in grouped.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def grouped_command(**kwargs: Any) -> Callable[[Callable[..., Any]], GroupedCommand]:
    """``@click.command`` with sectioned help; sections come from the ``option_group`` decorators."""

    def wrap(func: Callable[..., Any]) -> GroupedCommand:
        sections = getattr(func, "__click_sections__", {})
        command = click.command(cls=GroupedCommand, **kwargs)(func)
        command.sections = sections
        return command  # type: ignore[return-value]

    return wrap


class LazyGroup(click.Group):
    """A group whose subcommands are ``"module:attribute"`` strings, imported on first use."""

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}  # name -> (target, one-line help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module, attribute = self.lazy_commands[cmd_name][0].split(":")
            try:
                return getattr(importlib.import_module(module), attribute)
            except ImportError as exc:
                raise click.ClickException(
                    f"'promptcam {cmd_name}' needs a package that is not installed ({exc}); "
                    "see the README's extras (train, export, bench, ...)") from exc
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the one-line help is declared with the name, so listing commands imports nothing heavy
        rows = [(name, self.lazy_commands[name][1]) for name in self.list_commands(ctx) if name in self.lazy_commands]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
