"""The OpenAPI 3.1 document, the docs page, and the demo's typed users resource."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tornado.web
from openapi_spec_validator import validate

import demo_server
from tornado_jsonservlet import ServletRegistry
from tornado_jsonservlet.routing import openapi

PREFIX = "/api/v1"


@pytest.fixture
def app() -> tornado.web.Application:
    return demo_server.make_app()


def demo_document() -> dict[str, Any]:
    return demo_server.make_registry().openapi(title="demo", version="1.0", prefix=PREFIX)


def test_the_document_validates_as_openapi_31() -> None:
    document = demo_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_paths_parameters_bodies_responses_and_summaries() -> None:
    document = demo_document()
    paths = document["paths"]
    # Converters become schemas; untyped methods appear with what is known.
    echo = paths[f"{PREFIX}/echo/{{n}}"]["get"]
    assert echo["parameters"] == [
        {
            "name": "n",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "format": "int64"},
        }
    ]
    assert echo["responses"]["200"]["content"]["application/json"]["schema"] == {}
    assert "text/html" in paths[f"{PREFIX}/hello/{{name}}"]["get"]["responses"]["200"]["content"]
    # Typed methods: query arguments with their constraints, body, typed responses.
    listing = paths[f"{PREFIX}/users"]["get"]
    assert listing["summary"] == "List users, filtered by age and paginated."
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit == {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    }
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserPage"
    }
    create = paths[f"{PREFIX}/users"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserIn"
    }
    assert set(create["responses"]) == {"201", "400", "413", "415", "default"}
    delete = paths[f"{PREFIX}/users/{{user_id}}"]["delete"]
    assert delete["responses"]["204"] == {"description": "No content"}
    assert delete["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    schemas = document["components"]["schemas"]
    assert schemas["UserIn"]["required"] == ["name", "email"]
    assert schemas["Error"]["required"] == ["errcode", "error"]
    # The document's own pages are not in it.
    assert not any("openapi" in path or "/docs" in path for path in paths)


def test_422_is_documented_when_the_servlet_uses_it() -> None:
    class Strict(demo_server.Users):
        validation_status = 422

    registry = ServletRegistry()
    registry.register(Strict, store={}, ids=iter(range(1, 10)))
    document = registry.openapi(title="t", version="1")
    assert "422" in document["paths"]["/users"]["post"]["responses"]
    validate(document)


def test_docs_without_swagger_ui_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"tornado-jsonservlet\[openapi\]"):
        ServletRegistry().mount_openapi(title="t", version="1")
    ServletRegistry().mount_openapi(title="t", version="1", docs=False)


async def fetch(http_client: Any, url: str, **kwargs: Any) -> Any:
    return await http_client.fetch(url, raise_error=False, **kwargs)


@pytest.mark.gen_test
async def test_the_served_document_is_the_registry_s(http_client: Any, base_url: str) -> None:
    response = await fetch(http_client, f"{base_url}{PREFIX}/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    served = json.loads(response.body)
    expected = demo_server.make_registry().openapi(
        title="tornado-jsonservlet demo", version="1.0", prefix=PREFIX
    )
    assert served == json.loads(json.dumps(expected))
    validate(served)


@pytest.mark.gen_test
async def test_the_docs_page_and_its_assets_are_served_locally(
    http_client: Any, base_url: str
) -> None:
    page = await fetch(http_client, f"{base_url}{PREFIX}/docs")
    assert page.code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    assert "http://" not in html  # no CDN
    assert "https://" not in html
    for asset, kind in [
        ("swagger-ui-bundle.js", "application/javascript"),
        ("swagger-ui.css", "text/css"),
        ("start.js", "application/javascript"),
    ]:
        assert f"docs/{asset}" in html
        response = await fetch(http_client, f"{base_url}{PREFIX}/docs/{asset}")
        assert response.code == 200
        assert response.headers["Content-Type"].startswith(kind)
        assert len(response.body) > 10
    for hostile in ["..%2Fsetup.cfg", "x" * 60_000, "%C3%A9", "a%0D%0Ab"]:
        response = await fetch(http_client, f"{base_url}{PREFIX}/docs/{hostile}")
        assert response.code in (404, 414, 431)


# -- the demo's typed users resource ---------------------------------------------------


async def call(http_client: Any, base_url: str, method: str, path: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {"method": method}
    if body is not None:
        kwargs["body"] = json.dumps(body)
        kwargs["headers"] = {"Content-Type": "application/json"}
    response = await fetch(http_client, f"{base_url}{PREFIX}{path}", **kwargs)
    return response.code, (json.loads(response.body) if response.body else None)


@pytest.mark.gen_test
async def test_users_crud(http_client: Any, base_url: str) -> None:
    code, created = await call(
        http_client,
        base_url,
        "POST",
        "/users",
        {"name": "Zoë", "email": "z@example.org", "age": 30},
    )
    assert code == 201
    assert (created["id"], created["name"]) == (1, "Zoë")
    assert created["created"].endswith("Z")
    await call(http_client, base_url, "POST", "/users", {"name": "Al", "email": "a@example.org"})
    code, page = await call(http_client, base_url, "GET", "/users?min_age=18&order=name")
    assert (code, page["total"], [u["name"] for u in page["items"]]) == (200, 1, ["Zoë"])
    code, page = await call(http_client, base_url, "GET", "/users?limit=1&offset=1")
    assert (code, [u["name"] for u in page["items"]], page["total"]) == (200, ["Al"], 2)
    code, user = await call(
        http_client, base_url, "PUT", "/users/1", {"name": "Zoe", "email": "z@example.org"}
    )
    assert (code, user["name"], user["age"], user["created"]) == (
        200,
        "Zoe",
        None,
        created["created"],
    )
    assert (await call(http_client, base_url, "DELETE", "/users/2")) == (204, None)
    code, error = await call(http_client, base_url, "GET", "/users/2")
    assert (code, error["errcode"]) == (404, "NOT_FOUND")
    # The id of a deleted user is never given again.
    code, again = await call(http_client, base_url, "POST", "/users", {"name": "B", "email": "b@c"})
    assert (code, again["id"]) == (201, 3)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "path", "body", "errcode", "loc"),
    [
        ("GET", "/users?limit=0", None, "INVALID_PARAM", ["query", "limit"]),
        ("GET", "/users?limit=" + "9" * 60_000, None, "INVALID_PARAM", ["query", "limit"]),
        ("GET", "/users?order=%C3%A9", None, "INVALID_PARAM", ["query", "order"]),
        ("POST", "/users", {"name": "", "email": "a@b"}, "INVALID_BODY", ["body", "name"]),
        ("POST", "/users", {"name": "a", "email": "nope"}, "INVALID_BODY", ["body", "email"]),
        ("POST", "/users", {"name": "a", "email": "a@b", "x": 1}, "INVALID_BODY", ["body", "x"]),
        (
            "POST",
            "/users",
            {"name": "a\r\nb" * 20_000, "email": "a@b"},
            "INVALID_BODY",
            ["body", "name"],
        ),
        (
            "POST",
            "/users",
            {"name": "a", "email": "a@b", "age": 2**70},
            "INVALID_BODY",
            ["body", "age"],
        ),
    ],
)
async def test_users_validation(
    http_client: Any, base_url: str, method: str, path: str, body: Any, errcode: str, loc: list[Any]
) -> None:
    code, error = await call(http_client, base_url, method, path, body)
    assert (code, error["errcode"], error["details"][0]["loc"]) == (400, errcode, loc)
    assert len(json.dumps(error)) < 1000
