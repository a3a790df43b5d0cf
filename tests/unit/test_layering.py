"""The functional core (topics/, billing/, models/) never touches Kafka, the network or the env."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "faust",
    "confluent_kafka",
    "aiokafka",
    "prometheus_client",
    "click",
    "aiohttp",
    "requests",
    "socket",
    "os",
    "subprocess",
}
CORE = ["topics", "billing", "models"]


def core_files() -> list[Path]:
    return sorted(p for pkg in CORE for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_nothing_from_the_shell(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            assert root not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"
            assert root != "streams", f"{path.relative_to(ROOT)} imports the shell ({name})"
