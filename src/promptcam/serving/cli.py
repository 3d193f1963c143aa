"""``promptcam serve MODEL_DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import grouped_command, option_group, run_cli, verbose_option
from promptcam.runtime.backends import ENGINES

from .server import ServeOptions

port = click.IntRange(1, 65535)


@grouped_command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@option_group(
    "Model and engine",
    click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                 help="auto: TensorRT plan > ORT CUDA > CPU, and says which it picked."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="ONNX Runtime intra-op threads (default: all cores)."),
)
@option_group(
    "Endpoints",
    click.option("--host", default=ServeOptions.host, show_default=True,
                 help="Address to listen on (0.0.0.0: every interface; the endpoints have no authentication)."),
    click.option("--http-port", type=port, default=ServeOptions.http_port, show_default=True),
    click.option("--grpc-port", type=port, default=ServeOptions.grpc_port, show_default=True),
    click.option("--metrics-port", type=port, default=ServeOptions.metrics_port, show_default=True,
                 help="Prometheus metrics (/metrics)."),
)
@option_group(
    "Batching",
    click.option("--max-batch-size", type=click.IntRange(min=1), default=ServeOptions.max_batch_size,
                 show_default=True, help="Largest batch (one request's images, or requests batched together)."),
    click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=ServeOptions.max_queue_delay_us,
                 show_default=True, help="How long a request may wait for others to batch with."),
    click.option("--drain-seconds", type=click.IntRange(min=0), default=ServeOptions.drain_seconds,
                 show_default=True, help="On SIGTERM: how long the requests in flight may take to finish."),
)
@verbose_option
def serve(model_dir: Path, engine: str, threads: int | None, host: str, http_port: int, grpc_port: int,
          metrics_port: int, max_batch_size: int, max_queue_delay_us: int, drain_seconds: int, verbose: bool) -> None:
    """Serve MODEL_DIR (written by promptcam export) with Triton Inference Server over HTTP and gRPC.

    Clients send uint8 pixels at the model's size (pixels [B, S, S, 3]) and get logits, top_class and
    top_attention (attention, head_context, value_mean on request); promptcam run --server and
    promptcam watch --server are such clients.
    """

    def body() -> None:
        from .server import serve as run_server

        options = ServeOptions(model_dir=model_dir, engine=engine, threads=threads, host=host, http_port=http_port,
                               grpc_port=grpc_port, metrics_port=metrics_port, max_batch_size=max_batch_size,
                               max_queue_delay_us=max_queue_delay_us, drain_seconds=drain_seconds, verbose=verbose)
        code = run_server(options, log=lambda line: click.echo(line, err=True))
        if code:
            raise SystemExit(code)

    run_cli(body, verbose=verbose)


main = serve
