"""``promptcam-review``: review results with their heatmaps in a local web page, and correct labels.

``promptcam-review RESULTS`` (the same as ``promptcam-review serve RESULTS``) indexes the results
and serves the page; ``promptcam-review export RESULTS --out DIR`` writes the verdicts.
"""

from __future__ import annotations

import socket
from pathlib import Path

import click

from promptcam.core.cli import run_cli, verbose_option
from promptcam.core.errors import PromptCamError
from promptcam.runtime.backends import ENGINES

TOKEN_ENV = "PROMPTCAM_REVIEW_TOKEN"  # the same as access.TOKEN_ENV (not imported: --help stays light)


class DefaultServeGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, is RESULTS for ``serve``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultServeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Review results with heatmaps in a local web page; correct labels.

    \b
    promptcam-review RESULTS [--model DIR] [--host 127.0.0.1] [--port 8787] [--token TEXT] [--allow-host NAME]
    promptcam-review export RESULTS --out DIR
    """


def _check_token(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("the token must not be blank")
    return value


def _check_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from .access import host_name

    for name in value:
        if host_name(name) is None:
            raise click.BadParameter(f"{name!r} is not a host name or address")
    return value


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (a name or an address) and ``port`` (0: any free port).

    Raises:
        PromptCamError: the address cannot be resolved or bound (in use, not this machine's).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        raise PromptCamError(f"--host {host}: not an address of this machine ({exc})") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise PromptCamError(f"cannot listen on {host} port {port} ({exc.strerror or exc})") from exc
    return sock


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Exported model directory: compute any class's heatmap on demand.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True, help="Engine for --model.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. On loopback (127.0.0.0/8, ::1, localhost) no token is needed; any other "
                   "address (0.0.0.0: every one) makes the page ask for its token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True,
              help="Port (0: any free one; the address printed says which).")
@click.option("--token", envvar=TOKEN_ENV, default=None, callback=_check_token,
              help=f"The page's access token (also ${TOKEN_ENV}). Default: a random one off loopback, none on "
                   "loopback; given, it is asked for on loopback too. The page is opened once at the address "
                   "printed, http://HOST:PORT/?token=TOKEN, and the browser keeps it in a cookie.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME", callback=_check_names,
              help="Another name the page may be reached by (this machine's DNS name, a proxy's); repeatable. "
                   "Requests naming any other host are refused (against DNS rebinding).")
@click.option("--reindex", is_flag=True, help="Index the results again even if they look unchanged.")
@verbose_option
def serve(results: Path, model_dir: Path | None, engine: str, host: str, port: int, token: str | None,
          allow_hosts: tuple[str, ...], reindex: bool, verbose: bool) -> None:
    """Serve the review page for RESULTS (a promptcam-run folder or a promptcam-watch database).

    New results (a watcher still running) appear as they come, looked for at most every few seconds.
    """

    def body() -> None:
        import uvicorn

        from .access import Access, host_name, review_urls
        from .app import create_app
        from .index import build_index, locate
        from .media import Explainer

        source = locate(results)
        explainer = Explainer(model_dir, engine) if model_dir is not None else None
        sock = None
        try:
            build_index(source, class_names=explainer.class_names if explainer else None, force=reindex,
                        log=lambda m: click.echo(m, err=True))
            sock = bind(host, port)
            address, bound_port = sock.getsockname()[:2]
            names = [*([host] if host_name(host) else []), *allow_hosts]  # the name bound is one to answer to
            access = Access.for_bind(address, names=names, token=token)
            if not access.loopback:
                click.echo(f"warning: serving on {address}: whoever can reach it and has the token can see the "
                           "photos and change the reviews (plain HTTP: use it on a network you trust)", err=True)
            app = create_app(source, explainer=explainer, access=access)
            urls = review_urls(address, bound_port, access.token)
            click.echo(f"review page: {urls[0]}  (Ctrl-C stops)", err=True)
            for url in urls[1:]:
                click.echo(f"  from other machines: {url}", err=True)
            config = uvicorn.Config(app, log_level="info" if verbose else "warning")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            if sock is not None:
                sock.close()
            if explainer is not None:
                explainer.close()

    run_cli(body, verbose=verbose)


@main.command("export")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for corrections.csv and images/<class>/ (for promptcam-train --data OUT/images).")
@verbose_option
def export_command(results: Path, out_dir: Path, verbose: bool) -> None:
    """Write the reviews of RESULTS as a CSV and an ImageFolder tree."""

    def body() -> None:
        from .export import export_reviews
        from .index import locate
        from .query import ReviewStore

        source = locate(results)
        if not source.review_db.is_file():
            raise PromptCamError(f"{source.path}: nothing reviewed yet (no {source.review_db.name})")
        store = ReviewStore(source.review_db)
        try:
            summary = export_reviews(store, out_dir, log=lambda m: click.echo(m, err=True))
        finally:
            store.close()
        click.echo(f"{summary.reviewed} reviewed ({summary.corrected} corrected): {summary.csv}; "
                   f"{summary.linked} linked and {summary.copied} copied into {summary.tree}"
                   + (f"; {len(summary.missing)} missing on disk" if summary.missing else ""))

    run_cli(body, verbose=verbose)
