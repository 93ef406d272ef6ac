"""How an application uses the public API, checked with ``mypy --strict`` (see .ci/run).

Nothing here runs as a test. Each ``assert_type`` pins a type the library
promises, and each ``# type: ignore[...]`` marks a call that must stay an error:
with ``warn_unused_ignores`` (part of ``--strict``) an ignore that stops being
needed fails the check, so a type that silently widens to ``Any`` is caught.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Optional

import msgspec
import tornado.web

from tornado_jsonservlet import (
    WRITE_STALLED,
    CancelOnDisconnectMixin,
    CancelReason,
    Header,
    HtmlServlet,
    InMemoryMetrics,
    JsonErrorMixin,
    JsonServlet,
    NotFound,
    ServletError,
    ServletRegistry,
    ValidationFailed,
    require,
    serve,
    shutdown_notice,
)
from tornado_jsonservlet.jsonio.lane import LowPriorityLane, lane_for_running_loop
from tornado_jsonservlet.routing.registry import UrlRule

if TYPE_CHECKING:
    from typing_extensions import assert_type


class UserServlet(JsonServlet):
    PATTERNS = ("/users/{user_id:int}",)

    async def on_GET(self, user_id: int) -> dict[str, Any]:
        if user_id < 0:
            raise NotFound("No such user")
        return {"id": user_id}

    async def on_PUT(self, user_id: int) -> tuple[int, dict[str, Any]]:
        body = self.json_body
        assert_type(body, dict[str, Any])
        name = require(body, "name", str)
        assert_type(name, str)
        assert_type(self.get_json_body(required=False), Optional[dict[str, Any]])
        assert_type(self.get_json_body(object_required=False), Any)
        wrong: list[int] = self.json_body  # type: ignore[assignment]
        return 201, {"id": user_id, "name": name, "wrong": wrong}


class HelloPage(HtmlServlet):
    PATTERNS = ("/hello/{name}",)
    error_template = "<h1>{code}</h1>"

    def on_GET(self, name: str) -> str:
        return f"<p>{name}</p>"


class HomeHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write("home")


class PatientHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    write_timeout = 120.0  # seconds a pending write may make no progress

    async def get(self) -> None:
        reason: Optional[CancelReason] = self.cancel_reason
        if reason is WRITE_STALLED:
            return


class NeverGivesUp(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    write_timeout = None


registry = ServletRegistry(metrics=InMemoryMetrics())
registry.register(UserServlet)
registry.register(HelloPage)


@registry.route("/health")
def health(handler: JsonServlet) -> dict[str, bool]:
    return {"ok": handler.request.method == "GET"}


@registry.route("/users/{user_id:int}/avatar", methods=("GET", "DELETE"))
async def avatar(handler: JsonServlet, user_id: int) -> tuple[int, bytes]:
    return 200, b""


async def check_route_keeps_types(servlet: JsonServlet) -> None:
    assert_type(health(servlet), dict[str, bool])
    assert_type(await avatar(servlet, 7), tuple[int, bytes])
    health("not a handler")  # type: ignore[arg-type]
    await avatar(servlet, user_id="7")  # type: ignore[arg-type]


# -- urlspecs() composes with the rule lists Application accepts, with no cast --------

other_rules = [(r"/", HomeHandler)]
annotated_rules: list[UrlRule] = [(r"/", HomeHandler), (r"/home", HomeHandler, {}, "home")]

apps = [
    tornado.web.Application(registry.urlspecs("/api/v1") + [(r"/", HomeHandler)]),  # noqa: RUF005
    tornado.web.Application(registry.urlspecs("/api/v1") + other_rules),
    tornado.web.Application(other_rules + registry.urlspecs("/api/v1")),
    tornado.web.Application(registry.urlspecs("/api/v1") + annotated_rules),
    tornado.web.Application([*registry.urlspecs("/api/v1"), (r"/", HomeHandler)]),
    tornado.web.Application(registry.urlspecs(settings={"template_path": "templates"})),
]


# -- error handlers are checked against their exception and handler classes -------------


class ApiHandler(JsonErrorMixin, tornado.web.RequestHandler):
    error_handlers = {LookupError: lambda handler, error: NotFound(str(error))}


def missing_row(handler: ApiHandler, error: LookupError) -> ServletError:
    return NotFound(f"No such record: {error}")


def db_down(handler: ApiHandler, error: ConnectionError) -> None:
    handler.set_status(503)
    handler.finish({"errcode": "DB_DOWN", "error": "Try again shortly"})


class PlainApi(JsonErrorMixin, tornado.web.RequestHandler):
    pass


ApiHandler.add_error_handler(KeyError, missing_row)  # a KeyError is a LookupError
ApiHandler.add_error_handler(ConnectionError, db_down)
ApiHandler.add_error_handler(ValueError, db_down)  # type: ignore[arg-type]
PlainApi.add_error_handler(ConnectionError, db_down)  # type: ignore[arg-type]


def interactive_work_without_write_json() -> None:
    """A handler that answers with plain ``write`` asks big responses to make room."""
    lane = lane_for_running_loop()
    lane.note_interactive()
    if TYPE_CHECKING:
        assert_type(lane.yielding_to_interactive, bool)
        assert_type(lane.bulk_share, float)
    LowPriorityLane(bulk_share="half")  # type: ignore[arg-type]


async def make_app_async() -> tornado.web.Application:
    return tornado.web.Application()


async def close_pool(app: tornado.web.Application) -> None:
    return None


def open_pool(app: tornado.web.Application) -> None:
    return None


def run_with_lifecycle_hooks() -> None:
    """An async factory and sync/async hooks are accepted by ``serve``."""
    serve(make_app_async, 8888, on_startup=[open_pool], on_shutdown=close_pool)
    serve(make_app_async, 8888, on_startup=open_pool, processes="2")  # type: ignore[arg-type]


async def stream_until_shutdown(handler: tornado.web.RequestHandler) -> None:
    notice = shutdown_notice(handler)
    if TYPE_CHECKING:
        assert_type(notice, asyncio.Future[None])
    await notice


# -- typed servlets (issue 21) ---------------------------------------------------------


class NewUser(msgspec.Struct):
    name: str


class UserOut(msgspec.Struct):
    id: int
    name: str


class TypedUsers(JsonServlet):
    PATTERNS = ["/typed-users/{user_id:int}"]  # a list, as the README writes it
    validation_status = 422

    async def on_PUT(
        self,
        user_id: int,
        body: NewUser,
        *,
        dry_run: bool = False,
        trace: Annotated[Optional[str], Header("X-Trace")] = None,
    ) -> UserOut:
        return UserOut(user_id, body.name)


registry.register(TypedUsers)
registry.mount_openapi(title="Users", version="1.0", docs=False)
openapi_document: dict[str, Any] = registry.openapi(title="Users", version="1.0", prefix="/api")
failure = ValidationFailed(400, "bad", "INVALID_PARAM", details=[{"loc": ["query", "q"]}])
