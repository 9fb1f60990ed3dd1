"""The pages that read: promotions, one promotion (with its live regions and burn-down), alerts, approvals,
actions, and signing in and out. Each reads the center as the signed-in person; a refusal or an unreachable
center is shown on the page with what to do, as the CLI prints it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from quota_admin.client import AdminClient, CenterError, CenterRefused
from quota_common.clock import Clock
from quota_console import reads
from quota_console.auth import csrf_token, posted_form, require_user, safe_next, sign_in, signed_in
from quota_console.figures import STATES, matches

_STATUSES = {"PERMISSION_DENIED": 403, "UNAUTHENTICATED": 403, "NOT_FOUND": 404}
"""A refusal's status on the page; any other refusal, or a center that did not answer: 502."""


def center_for(request: Request, fired: list[str] | None = None) -> AdminClient:
    """The center as the signed-in person sees it: their certificate on every call; the guard rules that
    fire on a change go to `fired`."""
    user = signed_in(request)
    assert user is not None, "pages call the center only behind require_user"
    state = request.app.state
    warn = fired.extend if fired is not None else None
    return AdminClient(list(state.center), state.timeout_s, user.transport, warn)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """`template` with what every page shows: who is signed in, the CSRF token, and the message of the last
    action (shown once, by a whole page: a part refreshed meanwhile leaves it for the page)."""
    partial = template.startswith("_")
    context |= {
        "user": signed_in(request),
        "csrf": csrf_token(request),
        "flash": None if partial else request.session.pop("flash", None),
        "refresh_s": request.app.state.refresh_s,
    }
    response: Response = request.app.state.templates.TemplateResponse(request, template, context, status_code)
    return response


def refused(request: Request, error: CenterError) -> Response:
    """The center's refusal (or silence) as a page: its message, what to do, and the status it means here."""
    status = _STATUSES.get(error.code.name, 502) if isinstance(error, CenterRefused) else 502
    return render(request, "error.html", status, message=error.message, hint=error.hint)


def now_ms(request: Request) -> int:
    clock: Clock = request.app.state.clock
    return clock.wall_ms()


def reading(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A signed-in page whose center errors become the error page."""

    async def page(request: Request) -> Response:
        try:
            return await handler(request)
        except CenterError as error:
            return refused(request, error)

    return require_user(page)


@reading
async def promotions(request: Request) -> Response:
    state, search = request.query_params.get("state", ""), request.query_params.get("q", "")
    overview = await reads.overview(center_for(request), now_ms(request))
    rows = [row for row in overview.rows if matches(row, state, search)]
    template = "_promotion_rows.html" if request.headers.get("HX-Request") else "promotions.html"
    return render(request, template, rows=rows, overview=overview, states=STATES, state=state, search=search)


@reading
async def promotion(request: Request) -> Response:
    promotion_id = request.path_params["promotion_id"]
    page = await reads.promotion_page(center_for(request), promotion_id, now_ms(request))
    return render(request, "promotion.html", page=page, row=page.row, report=page.row.report)


@reading
async def promotion_regions(request: Request) -> Response:
    report = await reads.regions(center_for(request), request.path_params["promotion_id"])
    return render(request, "_regions.html", report=report, as_of=now_ms(request))


async def burndown(request: Request) -> Response:
    if signed_in(request) is None:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    try:
        data = await reads.burndown_data(center_for(request), request.path_params["promotion_id"], now_ms(request))
    except CenterError as error:
        return JSONResponse({"error": error.message}, status_code=502)
    return JSONResponse(data)


@reading
async def alerts(request: Request) -> Response:
    show_all = request.query_params.get("all") == "1"
    listed = await reads.alerts(center_for(request), include_acknowledged=show_all)
    return render(request, "alerts.html", alerts=listed, show_all=show_all)


@reading
async def approvals(request: Request) -> Response:
    changes = await reads.pending(center_for(request))
    return render(request, "approvals.html", changes=changes)


@reading
async def actions(request: Request) -> Response:
    overview = await reads.overview(center_for(request), now_ms(request))
    regions = sorted({region for row in overview.rows for region in row.promotion.regions})
    return render(request, "actions.html", overview=overview, regions=regions)


async def login(request: Request) -> Response:
    target = safe_next(request.query_params.get("next", "/"))
    if request.method == "GET":
        return render(request, "login.html", target=target, failed=False)
    fields = await posted_form(request)
    if await sign_in(request, fields) is None:
        return render(request, "login.html", 401, target=target, failed=True)
    return RedirectResponse(safe_next(fields.get("next", "/")), status_code=303)


async def logout(request: Request) -> Response:
    await posted_form(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def healthz(request: Request) -> Response:
    """For Kubernetes' probes: the console serves (the center's health is the center's own probe's)."""
    return Response("ok\n", media_type="text/plain")


ROUTES = [
    Route("/", promotions),
    Route("/promotions/{promotion_id}", promotion),
    Route("/promotions/{promotion_id}/regions", promotion_regions),
    Route("/promotions/{promotion_id}/burndown.json", burndown),
    Route("/alerts", alerts),
    Route("/approvals", approvals),
    Route("/actions", actions),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/healthz", healthz),
]
