"""docs/tutorial.md's step 7, "Add an event type", done to a baked service as a newcomer does it,
with the code taken from the tutorial: the service's own tests then pass, the SIGKILL test
with its reference included."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Bake

TUTORIAL = ROOT / "docs" / "tutorial.md"


def step_seven_blocks() -> list[str]:
    text = TUTORIAL.read_text()
    start = text.index("## 7. Add an event type")
    step = text[start : text.index("### Add a column to the read model", start)]
    return re.findall(r"```(?:python|bash)\n(.*?)```", step, re.DOTALL)


def block(blocks: list[str], marker: str) -> str:
    [found] = [b for b in blocks if marker in b]
    return found


def insert(path: Path, anchor: str, text: str, *, before: bool = False) -> None:
    """Put ``text`` after (or before) the line holding ``anchor``, where the tutorial says."""
    lines = path.read_text().splitlines(keepends=True)
    [at] = [i for i, line in enumerate(lines) if anchor in line]
    lines.insert(at if before else at + 1, text)
    path.write_text("".join(lines))


@pytest.mark.kafka
def test_step_seven_of_the_tutorial_leaves_a_service_whose_tests_pass(
    bake: Bake, kafka_brokers: str
) -> None:
    project = bake(project_name="Shop Customers")
    domain = project / "src" / "shop_customers" / "domain"
    blocks = step_seven_blocks()

    insert(domain / "aggregate.py", 'tier: str = "bronze"', block(blocks, 'address: str = ""'))
    event = block(blocks, "class AddressChanged")
    insert(domain / "events.py", "class TierChanged", event + "\n\n", before=True)
    handlers = domain / "handlers.py"
    insert(handlers, "from shop_customers.domain.events import (", "    AddressChanged,\n")
    handler = block(blocks, "@handlers.on(AddressChanged)")
    insert(handlers, "@upcasters.register", handler + "\n\n", before=True)
    write_test = block(blocks, "cat > tests/test_address.py")
    subprocess.run(["bash", "-c", write_test], cwd=project, check=True)
    service_test = project / "tests" / "test_service.py"
    insert(service_test, '"tier": "bronze",', block(blocks, '"address": ""'))
    rule = block(blocks, 'kind == "address_changed"')
    insert(service_test, 'state["loyalty_points"] += event["points"]', rule)

    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=project, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    env = {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_brokers,
    }
    env.pop("PYTEST_ADDOPTS", None)
    tests = ["tests/test_address.py", "tests/test_handlers.py", "tests/test_service.py"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *tests,
            "-k",
            "address or handler or sigkill",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = done.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, output
