"""The public HTTP API under fuzzing: schemathesis generates requests from the OpenAPI
document a live node serves (on a real broker), for every operation, in its examples,
coverage (boundary values, invalid requests) and fuzzing phases. No answer is a 5xx,
and every 4xx says what is wrong (``fuzz_checks.client_errors_say_why``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clustertools import ADMIN_TOKEN, new_service
from conftest import Bake

pytestmark = pytest.mark.kafka

EXAMPLES = 40  # random requests per operation in the fuzzing phase: about a minute in all


def test_no_generated_request_gets_a_5xx_and_every_4xx_says_why(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "fuzz", bake(), kafka_brokers, tmp_path, 2, STANDBY_REPLICAS="0", READ_MODEL="on"
    )
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=90)
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{node.url}/schema/openapi.json",
                "--checks",
                "not_a_server_error,client_errors_say_why",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                str(EXAMPLES),
                "--header",
                f"Authorization: Bearer {ADMIN_TOKEN}",
                "--request-timeout",
                "15",
                "--no-color",
            ],
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "fuzz_checks",
                "PYTHONPATH": str(Path(__file__).parent),
            },
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        node.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
