"""Typed servlet methods: registration refuses mistakes; inputs validated from type hints."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid
from typing import Annotated, Any, Literal, Optional

import msgspec
import pydantic
import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typing_extensions import TypedDict

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet.routing.signatures import Header, signature_of

# -- registration refuses mistakes ---------------------------------------------------


class LowerCase(JsonServlet):
    PATTERNS = ("/lower",)

    def on_get(self) -> Any:
        return {}


class LowerAndUpper(JsonServlet):
    PATTERNS = ("/both",)

    def on_GET(self) -> Any:
        return {}

    def on_post(self) -> Any:
        return {}


class TornadoStyle(JsonServlet):
    PATTERNS = ("/tornado",)

    def on_GET(self) -> Any:
        return {}

    def post(self) -> None:  # type: ignore[override]
        self.write("x")


class Nothing(JsonServlet):
    PATTERNS = ("/nothing",)


class UnknownParam(JsonServlet):
    PATTERNS = ("/users/{user_id:int}",)

    def on_GET(self, user_id, limit):  # type: ignore[no-untyped-def]
        return {}


class MissingPathParam(JsonServlet):
    PATTERNS = ("/users/{user_id:int}",)

    def on_GET(self) -> Any:
        return {}


class Address(msgspec.Struct):
    zip: str


class UserIn(msgspec.Struct):
    name: str
    address: Address


class TwoBodies(JsonServlet):
    PATTERNS = ("/two",)

    def on_POST(self, a: UserIn, b: Address) -> Any:
        return {}


class BodyOnGet(JsonServlet):
    PATTERNS = ("/get-body",)

    def on_GET(self, body: UserIn) -> Any:
        return {}


class BadQueryType(JsonServlet):
    PATTERNS = ("/bad-query",)

    def on_GET(self, where: set[int]) -> Any:
        return {}


@pytest.mark.parametrize(
    ("servlet", "message"),
    [
        (LowerCase, r"LowerCase defines no on_GET.*it defines on_get.*\(on_GET\)"),
        (LowerAndUpper, r"LowerAndUpper\.on_post: servlet methods are upper case.*on_POST"),
        (TornadoStyle, r"TornadoStyle defines post\(\).*on_POST"),
        (Nothing, r"Nothing defines no on_GET/on_POST"),
        (UnknownParam, r"UnknownParam\.on_GET: parameter 'limit' is not in the pattern"),
        (MissingPathParam, r"MissingPathParam\.on_GET does not accept the path parameter.*user_id"),
        (TwoBodies, r"TwoBodies\.on_POST: two body parameters, 'a' and 'b'"),
        (BodyOnGet, r"BodyOnGet\.on_GET: parameter 'body' would be a request body.*GET"),
        (BadQueryType, r"BadQueryType\.on_GET: parameter 'where'.*not a query argument"),
    ],
)
def test_registration_refuses_mistakes(servlet: type[JsonServlet], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ServletRegistry().register(servlet)


@pytest.mark.parametrize(
    ("pattern", "shown"),
    [("/a/<int:x>", "<int:x>"), ("/a/<x>", "<x>"), ("/users/:id", ":id"), (":id/a", ":id")],
)
def test_foreign_pattern_syntax_is_refused(pattern: str, shown: str) -> None:
    with pytest.raises(ValueError, match=f"Plain: pattern .* uses .*{shown}.*write parameters as"):
        ServletRegistry().register(Plain, [pattern])


def test_a_raw_regex_with_named_groups_is_not_foreign_syntax() -> None:
    ServletRegistry().register(Plain, [r"^/raw/(?P<name>[a-z]+)$"])


def test_route_refuses_a_mistaken_signature_and_keeps_nothing() -> None:
    registry = ServletRegistry()

    @registry.route("/ok")
    def ok(handler: Any) -> Any:
        return {}

    with pytest.raises(TypeError, match="parameter 'what' is not in the pattern"):

        @registry.route("/ok", methods=("POST",))
        def bad(handler: Any, what) -> Any:  # type: ignore[no-untyped-def]
            return {}

    specs = registry.urlspecs()
    assert specs[0].handler_class.allowed_methods == ("GET", "HEAD", "OPTIONS")  # type: ignore[union-attr]


def test_validation_status_is_checked_where_it_is_set() -> None:
    with pytest.raises(TypeError, match="validation_status must be 400 or 422, not 500"):

        class Wrong(JsonServlet):
            PATTERNS = ("/wrong",)
            validation_status = 500

    registry = ServletRegistry()
    registry.register(Plain)
    with pytest.raises(ValueError, match="validation_status setting must be 400 or 422"):
        registry.urlspecs(settings={"validation_status": 418})


@pytest.mark.gen_test
async def test_validation_status_422_by_application_setting(
    http_client: Any, base_url: str
) -> None:
    # The fixture's app has no setting; a second app with it, served the same way.
    registry = ServletRegistry()
    registry.register(Typed)
    app = tornado.web.Application(registry.urlspecs("/s"), validation_status=422)
    server = tornado.httpserver.HTTPServer(app)
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    try:
        response = await http_client.fetch(
            f"http://127.0.0.1:{port}/s/typed/1?limit=x", raise_error=False
        )
        assert response.code == 422
        assert json.loads(response.body)["errcode"] == "INVALID_PARAM"
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_head_of_a_typed_return_has_no_body(http_client: Any, base_url: str) -> None:
    for path in ("/typed/7", "/required?q=1"):
        response = await http_client.fetch(
            base_url + path, method="HEAD", raise_error=False, headers={"Token": "t"}
        )
        assert (response.code, response.body) == (200, b"")


def test_patterns_may_be_a_list() -> None:
    class Listed(JsonServlet):
        PATTERNS = ["/listed/{n:int}"]

        def on_GET(self, n: int) -> Any:
            return {"n": n}

    ServletRegistry().register(Listed)


def test_signatures_are_read_once() -> None:
    first = signature_of(Typed, "GET", ["user_id"])
    assert signature_of(Typed, "GET", ["user_id"]) is first
    assert first.typed
    assert [q.name for q in first.query] == [
        "limit",
        "tags",
        "color",
        "mode",
        "since",
        "ref",
        "ratio",
        "verbose",
    ]
    assert [h.wire_name for h in first.headers] == ["X-Trace"]


# -- typed inputs, end to end ----------------------------------------------------------


class Plain(JsonServlet):
    PATTERNS = ("/plain/{name}",)

    def on_GET(self, name: str) -> Any:
        return {"name": name}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Note:
    text: str
    stars: int = 0


class Pet(TypedDict):
    name: str
    legs: int


class User(msgspec.Struct):
    id: int
    name: str
    zip: str
    created: datetime.datetime


class Typed(JsonServlet):
    PATTERNS = ("/typed/{user_id:int}",)

    def on_GET(
        self,
        user_id: int,
        limit: int = 10,
        tags: list[str] = [],  # noqa: B006  (never mutated; the default of a repeated argument)
        color: Optional[Color] = None,
        mode: Literal["a", "b"] = "a",
        since: Optional[datetime.datetime] = None,
        ref: Optional[uuid.UUID] = None,
        ratio: float = 1.0,
        verbose: bool = False,
        trace: Annotated[Optional[str], Header("X-Trace")] = None,
    ) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "limit": limit,
            "tags": tags,
            "color": color,
            "mode": mode,
            "since": since,
            "ref": ref,
            "ratio": ratio,
            "verbose": verbose,
            "trace": trace,
        }

    async def on_PUT(self, user_id: int, body: UserIn, *, dry_run: bool = False) -> User:
        return User(user_id, body.name, body.address.zip, datetime.datetime(2024, 1, 2, 3, 4, 5))


class Required(JsonServlet):
    PATTERNS = ("/required",)

    def on_GET(self, q: int, token: Annotated[str, Header()]) -> Any:
        return {"q": q, "token": token}

    def on_POST(self, notes: list[Note]) -> Any:
        return {"count": len(notes), "first": notes[0] if notes else None}

    def on_PATCH(self, pet: Pet) -> Any:
        return {"pet": pet}


class Strict422(JsonServlet):
    PATTERNS = ("/strict",)
    validation_status = 422

    def on_GET(self, q: int) -> Any:
        return {"q": q}


@pytest.fixture
def app() -> tornado.web.Application:
    registry = ServletRegistry()
    for servlet in (Plain, Typed, Required, Strict422, PydanticPets):
        registry.register(servlet)
    return tornado.web.Application(registry.urlspecs())


async def call(http_client: Any, base_url: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    if "body" in kwargs:
        kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
    response = await http_client.fetch(base_url + path, raise_error=False, **kwargs)
    return response.code, json.loads(response.body) if response.body else None


@pytest.mark.gen_test
async def test_query_arguments_are_converted(http_client: Any, base_url: str) -> None:
    code, body = await call(
        http_client,
        base_url,
        "/typed/7?limit=5&tags=a&tags=b&color=blue&mode=b&since=2024-01-02T03:04:05Z"
        "&ref=12345678-1234-1234-1234-123456789abc&ratio=0.5&verbose=true",
        headers={"X-Trace": "t-1"},
    )
    assert code == 200
    assert body == {
        "user_id": 7,
        "limit": 5,
        "tags": ["a", "b"],
        "color": "blue",
        "mode": "b",
        "since": "2024-01-02T03:04:05Z",
        "ref": "12345678-1234-1234-1234-123456789abc",
        "ratio": 0.5,
        "verbose": True,
        "trace": "t-1",
    }
    code, body = await call(http_client, base_url, "/typed/7")
    assert (code, body["limit"], body["tags"], body["color"]) == (200, 10, [], None)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("limit=abc", ["query", "limit"]),
        ("limit=" + "9" * 30, ["query", "limit"]),  # beyond 64 bits
        ("limit=" + "9" * 60_000, ["query", "limit"]),  # 60 KB
        ("ratio=nan", ["query", "ratio"]),
        ("ratio=1e400", ["query", "ratio"]),
        ("color=" + "x" * 60_000, ["query", "color"]),
        ("color=r%C3%A9d", ["query", "color"]),  # non-ASCII
        ("mode=a%0D%0Ab", ["query", "mode"]),  # CR/LF
        ("tags=a&limit=1&limit=x", ["query", "limit"]),  # the last of repeated values counts
        ("since=yesterday", ["query", "since"]),
        ("ref=%FF%FE", ["query", "ref"]),  # invalid UTF-8
        ("verbose=maybe", ["query", "verbose"]),
        ("color=null", ["query", "color"]),  # not None: leave it out for that
    ],
)
async def test_bad_query_arguments_are_400s_saying_where(
    http_client: Any, base_url: str, query: str, loc: list[str]
) -> None:
    code, body = await call(http_client, base_url, f"/typed/7?{query}")
    assert code == 400
    assert body["errcode"] == "INVALID_PARAM"
    assert body["details"][0]["loc"] == loc
    assert len(json.dumps(body)) < 1000  # never the raw input echoed at length


@pytest.mark.gen_test
async def test_missing_required_query_and_header(http_client: Any, base_url: str) -> None:
    code, body = await call(http_client, base_url, "/required?q=1")
    assert (code, body["errcode"], body["details"]) == (
        400,
        "MISSING_HEADER",
        [{"loc": ["header", "token"], "msg": "required"}],
    )
    code, body = await call(http_client, base_url, "/required", headers={"Token": "t"})
    assert (code, body["errcode"], body["details"][0]["loc"]) == (
        400,
        "MISSING_PARAM",
        ["query", "q"],
    )
    code, body = await call(
        http_client, base_url, "/required?q=%C3%A9", headers={"Token": "x" * 60_000}
    )
    assert (code, body["details"][0]["loc"]) == (400, ["query", "q"])
    code, body = await call(http_client, base_url, "/required?q=3", headers={"Token": "é"})
    assert (code, body) == (200, {"q": 3, "token": "é"})


@pytest.mark.gen_test
async def test_typed_body_and_typed_return(http_client: Any, base_url: str) -> None:
    good = json.dumps({"name": "Zoë", "address": {"zip": "75001"}})
    code, body = await call(http_client, base_url, "/typed/3?dry_run=1", method="PUT", body=good)
    assert (code, body) == (
        200,
        {"id": 3, "name": "Zoë", "zip": "75001", "created": "2024-01-02T03:04:05"},
    )


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("raw", "errcode", "loc"),
    [
        ('{"name": "n", "address": {"zip": 1}}', "INVALID_BODY", ["body", "address", "zip"]),
        ('{"name": "n", "address": {}}', "INVALID_BODY", ["body", "address", "zip"]),
        ('{"name": "n"}', "INVALID_BODY", ["body", "address"]),
        ("[1, 2]", "INVALID_BODY", ["body"]),
        ('{"name": NaN, "address": {"zip": "1"}}', "BAD_JSON", ["body"]),
        ('{"name": "\\ud800", "address": {"zip": "1"}}', "BAD_JSON", ["body"]),
        ('{"name": "n", "address": {"zip": "1"', "BAD_JSON", ["body"]),
        ("", "NOT_JSON", ["body"]),
        ('{"name": "' + "x" * 60_000 + '", "address": 5}', "INVALID_BODY", ["body", "address"]),
    ],
)
async def test_bad_bodies_are_400s_saying_where(
    http_client: Any, base_url: str, raw: str, errcode: str, loc: list[str]
) -> None:
    code, body = await call(http_client, base_url, "/typed/3", method="PUT", body=raw)
    assert (code, body["errcode"], body["details"][0]["loc"]) == (400, errcode, loc)
    assert len(json.dumps(body)) < 1000


@pytest.mark.gen_test
async def test_body_limits_and_content_type_still_apply(http_client: Any, base_url: str) -> None:
    code, body = await call(
        http_client,
        base_url,
        "/typed/3",
        method="PUT",
        body="x",
        headers={"Content-Type": "text/plain"},
    )
    assert (code, body["errcode"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    huge = json.dumps({"name": "x" * (1024 * 1024), "address": {"zip": "1"}})
    code, body = await call(http_client, base_url, "/typed/3", method="PUT", body=huge)
    assert (code, body["errcode"]) == (413, "TOO_LARGE")


@pytest.mark.gen_test
async def test_dataclass_list_and_typeddict_bodies(http_client: Any, base_url: str) -> None:
    code, body = await call(
        http_client, base_url, "/required", method="POST", body='[{"text": "a", "stars": 2}]'
    )
    assert (code, body) == (200, {"count": 1, "first": {"text": "a", "stars": 2}})
    code, body = await call(http_client, base_url, "/required", method="POST", body='[{"s": 1}]')
    assert (code, body["details"][0]["loc"]) == (400, ["body", 0, "text"])
    code, body = await call(
        http_client, base_url, "/required", method="PATCH", body='{"name": "rex", "legs": 4}'
    )
    assert (code, body) == (200, {"pet": {"name": "rex", "legs": 4}})


@pytest.mark.gen_test
async def test_validation_status_422_by_class_attribute(http_client: Any, base_url: str) -> None:
    code, body = await call(http_client, base_url, "/strict?q=x")
    assert (code, body["errcode"]) == (422, "INVALID_PARAM")


@pytest.mark.gen_test
async def test_untyped_methods_are_unchanged(http_client: Any, base_url: str) -> None:
    code, body = await call(http_client, base_url, "/plain/bob?anything=1")
    assert (code, body) == (200, {"name": "bob"})


@given(st.text(max_size=200))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_query_text_is_a_value_or_a_400(text: str) -> None:
    """The converted query struct never raises anything but ValidationFailed."""
    from tornado_jsonservlet.routing.signatures import ValidationFailed, _convert

    sig = signature_of(Typed, "GET", ["user_id"])
    for param in sig.query:
        raw = {param.name: [text] if param.repeated else text}
        try:
            _convert(sig._query_type, raw, "query", 400)
        except ValidationFailed as error:
            failure = error
        else:
            continue
        assert failure.code == 400
        assert failure.fields["details"][0]["loc"][0] == "query"


# -- pydantic v2 models: validated and documented by pydantic -----------------------------


class PydanticPet(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=1)
    legs: int = pydantic.Field(ge=0, le=8)
    weight: float = 1.0


class PydanticPets(JsonServlet):
    PATTERNS = ("/pydantic",)

    def on_POST(self, pet: PydanticPet) -> tuple[Literal[201], PydanticPet]:
        return 201, pet

    def on_PUT(self, pets: list[PydanticPet]) -> list[PydanticPet]:
        return pets


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "raw", "code", "errcode", "loc"),
    [
        ("POST", '{"name": "rex", "legs": 4}', 201, None, None),
        ("PUT", '[{"name": "rex", "legs": 4}]', 200, None, None),
        ("POST", '{"name": "", "legs": 4}', 400, "INVALID_BODY", ["body", "name"]),
        ("POST", '{"name": "rex", "legs": 99}', 400, "INVALID_BODY", ["body", "legs"]),
        (
            "PUT",
            '[{"name": "rex", "legs": 4}, {"legs": 1}]',
            400,
            "INVALID_BODY",
            ["body", 1, "name"],
        ),
        ("POST", '{"name": "rex", "legs": 4, "weight": NaN}', 400, "BAD_JSON", ["body"]),
        ("POST", '{"name": "rex", "legs": 4, "weight": 1e400}', 400, "BAD_JSON", ["body"]),
        (
            "POST",
            '{"name": "' + "x" * 60_000 + '", "legs": -1}',
            400,
            "INVALID_BODY",
            ["body", "legs"],
        ),
    ],
)
async def test_pydantic_bodies(
    http_client: Any,
    base_url: str,
    method: str,
    raw: str,
    code: int,
    errcode: Optional[str],
    loc: Optional[list[Any]],
) -> None:
    got, body = await call(http_client, base_url, "/pydantic", method=method, body=raw)
    assert got == code
    if errcode is None:
        expected = json.loads(raw)
        for pet in expected if isinstance(expected, list) else [expected]:
            pet.setdefault("weight", 1.0)
        assert body == expected
    else:
        assert (body["errcode"], body["details"][0]["loc"]) == (errcode, loc)
        assert len(json.dumps(body)) < 1000


def test_pydantic_models_are_documented_by_pydantic() -> None:
    from openapi_spec_validator import validate

    registry = ServletRegistry()
    registry.register(PydanticPets)
    document = registry.openapi(title="t", version="1")
    validate(document)
    post = document["paths"]["/pydantic"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PydanticPet"
    }
    assert document["components"]["schemas"]["PydanticPet"]["properties"]["legs"]["maximum"] == 8
    assert "201" in post["responses"]
