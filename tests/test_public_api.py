"""The public app without Kafka (its lifespan, which starts the engine, never runs): the id
rule on every route, unknown event fields, and the OpenAPI document and docs page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from test_codec_strict import DOMAIN

from backbone import Service
from backbone.http.hot_routes import HotRoutes
from backbone.http.internal import internal_app
from backbone.ids import (
    ID_RULE,
    MAX_ID_LENGTH,
    InvalidIdError,
    check_id,
    check_raw_path,
    id_problem,
)
from backbone.node.engine import Engine
from backbone.settings import EngineSettings
from backbone.testing import TestDriver

TOKEN = "t0ken"


@pytest.mark.parametrize(
    "aggregate_id",
    ["", " ", "\t", ".", "..", "a/b", "/", "a\x00b", "a\nb", "a\rb", "\x7f", "a\x85b", "x" * 257],
)
def test_ids_breaking_the_rule_are_refused_with_the_rule(aggregate_id: str) -> None:
    assert id_problem(aggregate_id) is not None
    with pytest.raises(InvalidIdError) as refused:
        check_id(aggregate_id)
    assert ID_RULE in str(refused.value)


@pytest.mark.parametrize(
    "aggregate_id", ["c-1", "a", "x" * MAX_ID_LENGTH, "...", ".a", "a b", "Kundenrückgrat", "a%2Fb"]
)
def test_ids_following_the_rule_are_accepted(aggregate_id: str) -> None:
    assert id_problem(aggregate_id) is None
    assert check_id(aggregate_id) == aggregate_id


def test_a_raw_path_must_decode_as_utf8() -> None:
    check_raw_path(b"/things/K%C3%BCnde/events")
    check_raw_path(b"/things/a%25FF")  # an encoded '%' followed by 'FF': fine
    check_raw_path(None)
    with pytest.raises(InvalidIdError, match="not valid UTF-8"):
        check_raw_path(b"/things/a%FFb")


def settings(tmp_path: Path) -> EngineSettings:
    return EngineSettings(service="things", store="thing", data_dir=tmp_path, internal_token=TOKEN)


SERVICE = Service(
    name="things",
    title="Thing Service",
    domain=DOMAIN,
    plural="things",
    partitions=1,
    standby_replicas=0,
    version="1.2.3",
)


@pytest.fixture(params=["litestar", "hot_routes"])
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient[Any]]:
    """The app as Litestar serves it, and behind the hot routes (as ``run`` serves it)."""
    app: Any = SERVICE.app(settings(tmp_path))
    if request.param == "hot_routes":
        app = HotRoutes(app, app.state.engine, "things")
    # No ``with``: the lifespan (which would start the engine on Kafka) does not run.
    yield TestClient(app)


BAD_PATHS = [
    "/things/%2E",
    "/things/%2E%2E",
    "/things/a%00b",
    "/things/a%0Ab",
    "/things/a%7Fb",
    "/things/a%FFb",
    "/things/%20",
    "/things/" + "x" * 257,
    "/things/a%2Fb",
    "/things/a/b",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_every_public_route_refuses_a_bad_id_with_the_rule(
    client: TestClient[Any], path: str
) -> None:
    got = client.get(path)
    assert got.status_code == 400, got.text
    assert ID_RULE in got.json()["detail"]
    posted = client.post(f"{path}/events", json={"type": "named", "name": "Bob"})
    assert posted.status_code == 400, posted.text
    assert ID_RULE in posted.json()["detail"]


def test_the_internal_route_refuses_a_bad_id_with_the_rule(tmp_path: Path) -> None:
    client = TestClient(internal_app(Engine(settings(tmp_path), DOMAIN)))
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in ["%2E%2E", "a%00b", "a%FFb", "%20"]:
        got = client.get(f"/internal/aggregates/{path}", headers=auth)
        assert got.status_code == 400, got.text
        assert ID_RULE in got.json()["detail"]
    assert client.get("/internal/aggregates/a%00b").status_code == 401  # the token comes first


def test_other_unrouted_paths_stay_a_plain_404(client: TestClient[Any]) -> None:
    assert client.get("/nowhere/a/b").status_code == 404
    assert client.post("/things/a/b/other", json={}).status_code == 404


def test_an_unknown_event_field_answers_400_naming_it(client: TestClient[Any]) -> None:
    got = client.post("/things/t-1/events", json={"type": "named", "nmae": "Bob"})
    assert got.status_code == 400
    assert "unknown field `nmae`" in got.json()["detail"]


def test_the_openapi_document_names_the_service_and_each_event_type(
    client: TestClient[Any],
) -> None:
    document = client.get("/schema/openapi.json").json()
    assert document["info"] == {"title": "Thing Service", "version": "1.2.3"}
    body = document["paths"]["/things/{aggregate_id}/events"]["post"]["requestBody"]
    union = body["content"]["application/json"]["schema"]
    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == {"named", "resized", "lenient"}
    schemas = document["components"]["schemas"]
    for name, ref in mapping.items():
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert schema["properties"]["type"] == {"enum": [name]}
    assert schemas["Named"]["additionalProperties"] is False
    assert "name" in schemas["Named"]["properties"]
    assert schemas["Resized"]["required"] == ["type", "size"]


def test_the_docs_page_loads_nothing_from_elsewhere(client: TestClient[Any]) -> None:
    page = client.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Thing Service 1.2.3" in page.text
    assert "/things/{aggregate_id}/events" in page.text
    assert "<script" not in page.text and "http://" not in page.text
    assert "https://" not in page.text and "<link" not in page.text
    for gone in ["/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc"]:
        assert client.get(gone).status_code == 404


def test_records_from_kafka_whose_key_breaks_the_rule_are_dead_lettered() -> None:
    with TestDriver(DOMAIN) as driver:
        for key in [b"..", b"a/b", b"a\x00b", b"a\nb", b"\xffa"]:
            driver.send_raw(key, b'{"type": "named", "name": "Bob"}')
        driver.send_raw(b"t-1", b'{"type": "named", "name": "Ada"}')
        assert [letter.reason for letter in driver.dead_letters] == ["invalid_key"] * 5
        assert all(ID_RULE in letter.error for letter in driver.dead_letters[:4])
        state = driver.get("t-1")
        assert state is not None and state.name == "Ada"


def test_the_openapi_document_lists_the_read_options_its_handler_parses(
    client: TestClient[Any],
) -> None:
    operation = client.get("/schema/openapi.json").json()["paths"]["/things/{aggregate_id}"]
    parameters = {p["name"]: p for p in operation["get"]["parameters"]}
    assert set(parameters) == {"aggregate_id", "consistency", "position"}
    assert parameters["aggregate_id"]["in"] == "path"
    assert parameters["consistency"]["schema"]["enum"] == ["active", "any"]
    assert parameters["position"]["in"] == "query"


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("consistency=all", "consistency must be one of active, any, not 'all'"),
        ("position=nonsense", "position"),
        ("consistency=any&position=0.x.1", "position"),
    ],
)
def test_a_read_with_a_bad_option_answers_400_saying_what(
    client: TestClient[Any], query: str, said: str
) -> None:
    got = client.get(f"/things/t-1?{query}")
    assert got.status_code == 400, got.text
    assert said in got.json()["detail"]
