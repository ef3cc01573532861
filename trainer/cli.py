"""The project's one command-line entry point: ``protsae``.

A thin shell over stage functions: ``db`` (migrations), ``serve`` (the explorer) and ``trainer``
(the pipeline's stages). Errors reach the user as one clear line and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from app.settings import get_settings
from app.store import migrate

cli = typer.Typer(
    name="protsae",
    help="ProtSAE Explorer: sparse autoencoders on ESM2, and a browser to read their features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="The store: migrations and status.", no_args_is_help=True)
trainer_cli = typer.Typer(help="The offline pipeline's stages.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(trainer_cli, name="trainer")

DatabaseOption = typer.Option(
    None,
    "--database-url",
    help="SQLAlchemy URL (default: PROTSAE_DATABASE_URL or the SQLite file).",
)


def _url(database_url: str | None) -> str:
    return database_url or get_settings().sqlalchemy_url


@db_cli.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    database_url: str | None = DatabaseOption,
) -> None:
    """Apply Alembic migrations up to REVISION (default: head)."""
    get_settings().ensure_data_dir()
    url = _url(database_url)
    migrate.upgrade(url, revision)
    typer.echo(f"store at revision {migrate.current_revision(url)}")


@db_cli.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base' drops everything)."),
    database_url: str | None = DatabaseOption,
) -> None:
    """Revert Alembic migrations down to REVISION."""
    url = _url(database_url)
    migrate.downgrade(url, revision)
    typer.echo(f"store at revision {migrate.current_revision(url)}")


@db_cli.command("current")
def db_current(database_url: str | None = DatabaseOption) -> None:
    """Print the store's migration revision."""
    typer.echo(migrate.current_revision(_url(database_url)) or "not migrated")


@cli.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Bind address (default: PROTSAE_HOST)."),
    port: int | None = typer.Option(None, help="Port (default: PROTSAE_PORT)."),
    database_url: str | None = DatabaseOption,
    reload: bool = typer.Option(False, help="Reload on code changes (development)."),
) -> None:
    """Serve the explorer and the REST API."""
    import uvicorn

    settings = get_settings()
    if database_url:
        os.environ["PROTSAE_DATABASE_URL"] = database_url
        get_settings.cache_clear()
    url = get_settings().sqlalchemy_url
    if migrate.current_revision(url) is None:
        raise typer.BadParameter(
            f"the store at {url} is not migrated: run `protsae db upgrade` first",
            param_hint="--database-url",
        )
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        reload=reload,
        log_level="info",
    )


@trainer_cli.command("report")
def trainer_report(
    run: str = typer.Option(..., "--run", help="Name of a published run."),
    out: Path = typer.Option(..., "--out", help="Folder to write index.html and the SVGs into."),
    base_url: str = typer.Option("", help="Explorer URL that feature links point at."),
    database_url: str | None = DatabaseOption,
) -> None:
    """Write a run's Findings figures (SVG) and an index.html into OUT."""
    from trainer.report import write_report

    try:
        index = write_report(_url(database_url), run, out, base_url)
    except LookupError as exc:
        raise typer.BadParameter(str(exc), param_hint="--run") from exc
    typer.echo(f"report written to {index}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
