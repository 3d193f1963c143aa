"""Shared command-line plumbing: one clear line and exit code 1 for project errors."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import click

from .errors import PromptCamError


def run_cli(body: Callable[[], object], *, verbose: bool = False) -> None:
    """Run a command body; a ``PromptCamError`` becomes ``error: ...`` and exit code 1."""
    try:
        body()
    except PromptCamError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
