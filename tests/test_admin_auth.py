"""The public ``/admin`` routes need ``Authorization: Bearer <ADMIN_TOKEN>``; health and
metrics stay open. The app runs without Kafka (its lifespan never starts the engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from test_public_api import SERVICE

from backbone.settings import EngineSettings, SettingsError

ADMIN_TOKEN = "4dm1n-s3cret"


def client(tmp_path: Path, admin_token: str) -> TestClient[Any]:
    settings = EngineSettings(
        service="things", store="thing", data_dir=tmp_path, admin_token=admin_token
    )
    return TestClient(SERVICE.app(settings))


def test_without_admin_token_the_admin_routes_are_closed_and_say_how_to_open_them(
    tmp_path: Path,
) -> None:
    got = client(tmp_path, "").get(
        "/admin/assignment", headers={"authorization": "Bearer anything"}
    )
    assert got.status_code == 403
    assert "no ADMIN_TOKEN set" in got.json()["detail"]
    assert "Authorization: Bearer <ADMIN_TOKEN>" in got.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({}, "no admin token"),
        ({"authorization": "Bearer wrong"}, "wrong admin token"),
        ({"authorization": f"Basic {ADMIN_TOKEN}"}, "no admin token"),
        ({"authorization": f"Bearer {ADMIN_TOKEN}x"}, "wrong admin token"),
    ],
)
def test_a_missing_or_wrong_admin_token_answers_401_naming_header_and_setting(
    tmp_path: Path, headers: dict[str, str], said: str
) -> None:
    got = client(tmp_path, ADMIN_TOKEN).get("/admin/assignment", headers=headers)
    assert got.status_code == 401
    detail = got.json()["detail"]
    assert said in detail
    assert "'Authorization: Bearer <ADMIN_TOKEN>'" in detail and "ADMIN_TOKEN setting" in detail
    assert got.headers["www-authenticate"].startswith("Bearer")
    assert ADMIN_TOKEN not in got.text


def test_the_admin_token_opens_the_admin_routes(tmp_path: Path) -> None:
    got = client(tmp_path, ADMIN_TOKEN).get(
        "/admin/assignment", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    # Past the guard: the engine has not started, so there is no assignment yet.
    assert got.status_code == 503
    assert "starting" in got.json()["detail"]


def test_health_metrics_and_schema_need_no_token(tmp_path: Path) -> None:
    app = client(tmp_path, ADMIN_TOKEN)
    assert app.get("/health/live").status_code == 200
    assert app.get("/health/ready").status_code == 503  # starting, but not refused
    assert app.get("/metrics").status_code == 200
    document = app.get("/schema/openapi.json").json()
    assert document["paths"]["/admin/assignment"]["get"]["security"] == [{"admin_token": []}]
    scheme = document["components"]["securitySchemes"]["admin_token"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"


def test_the_admin_token_is_kept_out_of_reprs_and_placeholders_are_refused() -> None:
    settings = EngineSettings.from_env("svc", "thing", 1, 0, {"ADMIN_TOKEN": ADMIN_TOKEN})
    assert settings.admin_token == ADMIN_TOKEN
    assert ADMIN_TOKEN not in repr(settings)
    with pytest.raises(SettingsError, match="ADMIN_TOKEN is a placeholder"):
        EngineSettings.from_env("svc", "thing", 1, 0, {"ADMIN_TOKEN": "change-me"})
