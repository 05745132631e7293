"""snap init: create a repository."""

from __future__ import annotations

import click

from dedupe.config import Config
from dedupe.repository import Repository

from .app import App, UsageError, pass_app
from .sizes import parse_size


@click.command("init")
@click.option("--pack-size", default="16M", show_default=True, metavar="SIZE",
              help="Target pack size, 4M to 128M (every S3 PUT costs money).")
@click.option("--compression", "level", type=click.IntRange(0, 22), default=3,
              show_default=True, help="zstd level for blobs (0 = off).")
@click.option("--chunk-min", default="512K", show_default=True, metavar="SIZE")
@click.option("--chunk-avg", default="1M", show_default=True, metavar="SIZE")
@click.option("--chunk-max", default="8M", show_default=True, metavar="SIZE")
@click.option("--s3-lifecycle", is_flag=True,
              help="S3: install a rule that aborts incomplete multipart uploads.")
@pass_app
def command(app: App, pack_size, level, chunk_min, chunk_avg, chunk_max, s3_lifecycle) -> None:
    """Create a new repository."""
    try:
        config = Config(chunk_min=parse_size(chunk_min), chunk_avg=parse_size(chunk_avg),
                        chunk_max=parse_size(chunk_max), compression_level=level,
                        pack_size=parse_size(pack_size)).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    backend = app.backend()
    raw = backend
    while hasattr(raw, "inner"):  # look through retry/counting wrappers
        raw = raw.inner
    if hasattr(raw, "create_bucket_if_missing"):
        raw.create_bucket_if_missing()
    if s3_lifecycle:
        if not hasattr(raw, "install_lifecycle_rule"):
            raise UsageError("--s3-lifecycle applies to S3 repositories only")
        raw.install_lifecycle_rule()
    password = app.password(confirm=True)
    Repository.init(backend, password, config, cache_root=app.cache_dir,
                           no_cache=app.no_cache)
    if app.json:
        app.emit_json({"message_type": "initialized", "id": config.id,
                       "repository": backend.location})
    else:
        app.info(f"created snap repository {config.id[:10]} at {backend.location}")
        app.info("Please note that knowledge of your password is required to access the "
                 "repository. Losing your password means that your data is irrecoverably lost.")
