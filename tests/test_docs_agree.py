"""What a baked service's README and compose file promise matches what it runs."""

from __future__ import annotations

import re

import pytest

from conftest import Bake


@pytest.mark.parametrize(("zones", "nodes"), [("zone-a", 1), ("az-1,az-2,az-3", 3)])
def test_the_readme_promises_the_nodes_the_demo_runs(bake: Bake, zones: str, nodes: int) -> None:
    project = bake(zones=zones)
    readme = (project / "README.md").read_text()
    demo_line = next(line for line in readme.splitlines() if line.startswith("make demo"))
    assert re.search(rf"\+ {nodes} nodes? in zones", demo_line), demo_line
    demo = (project / "scripts" / "demo.py").read_text()
    started = re.search(r"^ZONES = \[(.*)\]$", demo, re.MULTILINE)
    assert started is not None and started[1].count('"') // 2 == nodes
    compose = (project / "docker-compose.yml").read_text()
    assert len(re.findall(r"^  node-\d+:$", compose, re.MULTILINE)) == nodes
    assert f"a broker and {nodes} node" in readme


def test_compose_has_no_default_token(bake: Bake) -> None:
    compose = (bake() / "docker-compose.yml").read_text()
    assert "change-me" not in compose
    assert "${INTERNAL_TOKEN:?" in compose
