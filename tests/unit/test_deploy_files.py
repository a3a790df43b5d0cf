"""docker-compose.yml, Dockerfile and .ci/run refer only to things that exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
import yaml

from streams.cli import main
from streams.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_env_vars() -> set[str]:
    names = {f"VOLTGUARD_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    names |= {f"VOLTGUARD_KAFKA_{f.name.upper()}" for f in dataclasses.fields(KafkaSettings)}
    names.add("VOLTGUARD_BOOTSTRAP_SERVERS")
    return names


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """Walk the click groups along ``args``; return the command and its remaining args."""
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`voltguard {' '.join(args)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_service_refers_to_existing_things(name: str) -> None:
    service = COMPOSE["services"][name]
    build = service.get("build")
    if build:
        context = ROOT / build["context"]
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file()
        for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile.read_text(), re.M):
            for part in src.split():
                assert (context / part).exists(), f"{dockerfile.name} copies missing {part}"
        command, rest = resolve(service.get("command", []))
        options = {
            opt
            for p in command.params
            for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
        }
        for arg in rest:
            if arg.startswith("--"):
                assert arg in options, f"{name}: `{command.name}` has no option {arg}"
    for var in service.get("environment", {}):
        if var.startswith("VOLTGUARD_"):
            assert var in known_env_vars(), f"{name}: unknown setting {var}"
    for dep in service.get("depends_on", {}):
        assert dep in COMPOSE["services"], f"{name} depends on unknown service {dep}"


def test_kafka_is_a_4x_kraft_broker() -> None:
    kafka = COMPOSE["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    first_commands = [
        line.split("#")[0].strip() for line in blocks[0].splitlines() if line.split("#")[0].strip()
    ]
    test_command = first_commands[-1]
    assert test_command in (ROOT / ".ci" / "run").read_text()


SECRET_NAMES = re.compile(r"SECRET|TOKEN|HMAC|PASSWORD|ROUTING_KEY|WEBHOOK_URL")


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_no_secret_in_compose(name: str) -> None:
    for var, value in (COMPOSE["services"][name].get("environment") or {}).items():
        if SECRET_NAMES.search(var):
            assert str(value).startswith("${"), f"{name}: {var} must come from the environment"


def test_router_secrets_are_named_by_the_routes_file() -> None:
    router = COMPOSE["services"]["router"]
    routes = yaml.safe_load((ROOT / "deploy/router/routes.example.yaml").read_text())
    named = {
        d[k]
        for d in routes["destinations"].values()
        for k in ("routing_key_env", "url_env")
        if k in d
    }
    assert named and named <= set(router["environment"])
    config = router["environment"]["VOLTGUARD_ROUTER_CONFIG"]
    assert config.startswith("/app/") and (ROOT / config.removeprefix("/app/")).is_file()
