"""docker-compose.yml, checked as far as a machine without a container engine allows: its
structure and its commands against the CLI they call; ``docker compose config`` where the
compose plugin exists."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.settings import PROJECT_ROOT, Settings
from trainer.cli import cli

COMPOSE = PROJECT_ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _shell_steps(service: dict[str, Any]) -> list[list[str]]:
    command = service["command"]
    assert command[:2] == ["sh", "-c"], "a shell line: migrate, then run"
    return [shlex.split(step) for step in command[2].split("&&")]


def test_services_volumes_and_bindings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"db", "app", "trainer"}
    named = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("/", ".")) or source in named, volume
        if "build" in service:
            assert (PROJECT_ROOT / service["build"] / "Dockerfile").exists()
    # The app is published on the host's loopback only.
    assert services["app"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["app"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["db"]["healthcheck"]["test"]
    for name in ("app", "trainer"):
        assert services[name]["environment"]["PROTSAE_DATABASE_URL"].startswith(
            "postgresql+psycopg://protsae:protsae@db:5432/"
        )


def test_the_app_serves_with_the_workers_setting_of_protsae_serve(compose: dict[str, Any]) -> None:
    """The app runs `protsae serve` with no --workers, so PROTSAE_WORKERS decides as for a user;
    compose passes the host's value through, and an unset one means one per core."""
    app = compose["services"]["app"]
    steps = _shell_steps(app)
    assert steps[0] == ["protsae", "db", "upgrade"]
    assert steps[-1] in (["exec", "protsae", "serve"], ["protsae", "serve"])
    assert app["environment"]["PROTSAE_WORKERS"] == "${PROTSAE_WORKERS:-}"
    assert Settings(workers="").workers is None  # type: ignore[arg-type]
    assert Settings(workers="3").workers == 3  # type: ignore[arg-type]
    # Every command the services run exists in the CLI with those arguments.
    runner = CliRunner()
    for service in ("app", "trainer"):
        for step in _shell_steps(compose["services"][service]):
            args = [a for a in step if a not in ("exec", "protsae")]
            result = runner.invoke(cli, [*args, "--help"])
            assert result.exit_code == 0, (service, step, result.output)
            if args[:1] == ["trainer"] and len(args) > 2:
                assert (PROJECT_ROOT / args[-1]).exists(), args[-1]
    assert "--workers" in runner.invoke(cli, ["serve", "--help"]).output


def test_docker_compose_config_where_available() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("no docker compose plugin on this machine (the file is checked above)")
    out = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
