"""The project's one command-line entry point: ``protsae``.

A thin shell over stage functions: ``db`` (migrations), ``serve`` (the explorer) and ``trainer``
(the pipeline's stages). Errors reach the user as one clear line and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from sqlalchemy.engine import make_url

from app.settings import Settings
from app.store import migrate

if TYPE_CHECKING:
    from trainer.pipeline import Pipeline

cli = typer.Typer(
    name="protsae",
    help="ProtSAE Explorer: sparse autoencoders on ESM2, and a browser to read their features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="The store: migrations and status.", no_args_is_help=True)
trainer_cli = typer.Typer(help="The offline pipeline's stages.", no_args_is_help=True)
STAGE_NAMES = (
    "ingest",
    "embed",
    "train",
    "analyze",
    "go",
    "worklist",
    "explain",
    "concepts",
    "publish",
)
cli.add_typer(db_cli, name="db")
cli.add_typer(trainer_cli, name="trainer")

DatabaseOption = typer.Option(
    None,
    "--database-url",
    help="SQLAlchemy URL (default: PROTSAE_DATABASE_URL or the SQLite file).",
)


def _url(database_url: str | None) -> str:
    return database_url or Settings().sqlalchemy_url


@db_cli.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    database_url: str | None = DatabaseOption,
) -> None:
    """Apply Alembic migrations up to REVISION (default: head)."""
    Settings().ensure_data_dir()
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


@db_cli.command("remove-run")
def db_remove_run(
    name: str = typer.Argument(..., help="The run's name (as in its config's [run] name)."),
    database_url: str | None = DatabaseOption,
) -> None:
    """Delete a run and everything in it; running servers forget their cached pages of it."""
    from app.store.engine import make_engine
    from app.store.publish import UnknownRunError, remove_run

    url = _url(database_url)
    _require_migrated(url)
    engine = make_engine(url)
    try:
        run_id = remove_run(engine, name)
    except UnknownRunError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from exc
    finally:
        engine.dispose()
    typer.echo(f"removed run {name!r} (id {run_id})")


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@cli.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Bind address (default: PROTSAE_HOST)."),
    port: int | None = typer.Option(None, help="Port (default: PROTSAE_PORT)."),
    database_url: str | None = DatabaseOption,
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Worker processes (default: PROTSAE_WORKERS, else the number of cores). Each has its "
        "own page cache, encode models and batching queue.",
    ),
    access_log: bool = typer.Option(True, help="Log every request (off behind a proxy that logs)."),
    reload: bool = typer.Option(False, help="Reload on code changes (development; one worker)."),
) -> None:
    """Serve the explorer and the REST API."""
    import uvicorn

    if database_url:  # each worker process builds its app's settings from the environment
        os.environ["PROTSAE_DATABASE_URL"] = database_url
    settings = Settings()
    _require_migrated(settings.sqlalchemy_url)
    n_workers = workers or settings.workers or default_workers()
    if reload and n_workers > 1:
        raise typer.BadParameter("--reload runs one worker: drop --workers", param_hint="--reload")
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        reload=reload,
        workers=None if reload else n_workers,
        log_level="info",
        access_log=access_log,
    )


def _require_migrated(url: str) -> None:
    """A clear error, before any work, when the store is not at this code's schema revision
    (a fresh store would otherwise fail at publish, after every other stage ran)."""
    current, head = migrate.current_revision(url), migrate.head_revision()
    if current == head:
        return
    shown = make_url(url).render_as_string(hide_password=True)
    state = "is not migrated" if current is None else f"is at revision {current}, not {head}"
    raise typer.BadParameter(
        f"the store at {shown} {state}: run `protsae db upgrade` first", param_hint="--database-url"
    )


ConfigArgument = typer.Argument(
    ..., exists=False, help="The run's TOML config (e.g. configs/demo.toml)."
)


def _pipeline(config: Path, database_url: str | None, republish: bool = False) -> Pipeline:
    from trainer.config import ConfigError, load_config
    from trainer.pipeline import Pipeline

    settings = Settings()
    try:
        cfg = load_config(config, settings)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
    return Pipeline(cfg, settings, database_url=database_url, republish=republish)


def _run_stages(
    config: Path, database_url: str | None, stages: list[str], republish: bool = False
) -> None:
    pipeline = _pipeline(config, database_url, republish)
    if "publish" in stages:
        _require_migrated(pipeline.database_url)
    try:
        run_id = pipeline.run(stages)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    if run_id is not None:
        typer.echo(f"published run {pipeline.cfg.run.name!r} (id {run_id})")


@trainer_cli.command("run")
def trainer_run(
    config: Path = ConfigArgument,
    database_url: str | None = DatabaseOption,
    stages: str | None = typer.Option(
        None, help="Comma-separated subset of: " + ", ".join(STAGE_NAMES)
    ),
    republish: bool = typer.Option(
        False, help="Replace the published run even when its config is unchanged."
    ),
) -> None:
    """Run every stage (each resumable), then publish the run atomically."""
    chosen = [s.strip() for s in stages.split(",")] if stages else list(STAGE_NAMES)
    unknown = [s for s in chosen if s not in STAGE_NAMES]
    if unknown:
        raise typer.BadParameter(f"unknown stage(s): {', '.join(unknown)}", param_hint="--stages")
    _run_stages(config, database_url, chosen, republish)


def _stage_command(stage: str, help_text: str) -> None:
    def command(config: Path = ConfigArgument, database_url: str | None = DatabaseOption) -> None:
        _run_stages(config, database_url, [stage])

    command.__doc__ = help_text
    trainer_cli.command(stage)(command)


for _stage, _help in (
    ("ingest", "Read proteins, GO ids and structures into the run's corpus."),
    ("embed", "Embed every protein with ESM2 (per residue and pooled), in shards."),
    ("train", "Train the SAEs, transcoders, controls and neuron baselines."),
    ("analyze", "Encode every protein; feature stats, top examples, neighbours."),
    ("go", "Gene Ontology enrichment of every feature, with null controls."),
    ("worklist", "Missing-annotation worklists from GO hits, checked against a later snapshot."),
    ("explain", "Claude explanations of features, scored, neurons as baseline."),
    ("concepts", "Residue-level concept alignment (F1 against real binding-site labels)."),
    ("publish", "Load the run into the store in one transaction."),
):
    _stage_command(_stage, _help)


@trainer_cli.command("summary")
def trainer_summary(
    config: Path = ConfigArgument,
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Print a run's figures (time per stage, fidelity, GO, concepts) from its work directory."""
    from trainer.summary import collect_summary, print_summary

    pipeline = _pipeline(config, None)
    try:
        summary = collect_summary(pipeline.workdir)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
    print_summary(summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=1))


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
