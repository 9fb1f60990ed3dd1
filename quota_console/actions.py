"""The writes, each one the CLI also has: freeze and unfreeze a promotion (`quota budget freeze`), the
emergency switch (`quota budget emergency`), acknowledge an alert (`quota alerts ack`), approve or reject a
held change (`quota budget approve | reject`).

A stop (a freeze, the emergency switch) is asked for on a confirmation page (GET) that names what it will
stop, and done by the form posted from it; acknowledging and deciding are done by their forms. Every write is
a POST with the session's CSRF token, answered by a redirect to the page it came from, which shows what the
center said: done (with any guard rule that fired), or its refusal and what to do about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from quota_admin.client import AdminClient, CenterError
from quota_admin.documents import CAUSES
from quota_center.v1 import quota_center_pb2 as pb
from quota_console import reads
from quota_console.auth import posted_form, require_user
from quota_console.pages import center_for, now_ms, reading, render

_ACTIONS = ("freeze", "unfreeze")


def _flash(request: Request, kind: str, text: str, hint: str = "") -> None:
    request.session["flash"] = {"kind": kind, "text": text, "hint": hint}


async def _write(request: Request, back: str, call: Callable[[AdminClient], Awaitable[str]]) -> Response:
    """Runs `call` as the signed-in person and goes `back`, with what it says done, or the center's refusal."""
    fired: list[str] = []
    try:
        done = await call(center_for(request, fired))
    except CenterError as error:
        _flash(request, "error", f"the center refused: {error.message}", error.hint)
    else:
        rules = f" (the guard rules flagged it: {', '.join(fired)})" if fired else ""
        _flash(request, "ok", done + rules)
    return RedirectResponse(back, status_code=303)


def _action(request: Request) -> str:
    action = str(request.path_params["action"])
    if action not in _ACTIONS:
        raise HTTPException(404, f"no such action {action!r}: {' or '.join(_ACTIONS)}")
    return action


@reading
async def confirm_freeze(request: Request) -> Response:
    action = _action(request)
    report = await reads.regions(center_for(request), request.path_params["promotion_id"])
    return render(request, "confirm_freeze.html", action=action, report=report)


async def _set_frozen(request: Request) -> Response:
    promotion_id, frozen = request.path_params["promotion_id"], _action(request) == "freeze"
    fields = await posted_form(request)
    request_message = pb.SetFrozenRequest(promotion_id=promotion_id, frozen=frozen, request_id=fields.get("ticket", ""))

    async def call(center: AdminClient) -> str:
        await reads.off_loop(lambda: center.call(lambda admin: admin.SetFrozen, request_message))
        if frozen:
            return f"{promotion_id} is frozen: regions refuse it as soon as they hear and give back what they hold"
        return f"{promotion_id} is unfrozen: regions take quota and sell it again"

    return await _write(request, f"/promotions/{promotion_id}", call)


@reading
async def confirm_emergency(request: Request) -> Response:
    action, region = _action(request), request.query_params.get("region", "")
    overview = await reads.overview(center_for(request), now_ms(request))
    stopped: list[dict[str, Any]] = [
        {"row": row, "burn": sum(r.burn_per_minute for r in row.report.regions if not region or r.region == region)}
        for row in overview.rows
        if row.state in ("live", "frozen") and (not region or region in row.promotion.regions)
    ]
    return render(request, "confirm_emergency.html", action=action, region=region, stopped=stopped)


async def _switch(request: Request) -> Response:
    fields = await posted_form(request)
    frozen, region = _action(request) == "freeze", fields.get("region", "")
    message = pb.SetEmergencyFreezeRequest(region=region, frozen=frozen, request_id=fields.get("ticket", ""))

    async def call(center: AdminClient) -> str:
        # Every center group holds the switch; they answer alike.
        switch, *_ = await reads.off_loop(lambda: center.fan_out(lambda admin: admin.SetEmergencyFreeze, message))
        if switch.everywhere:
            return "the emergency switch freezes every region"
        if switch.regions:
            return f"the emergency switch freezes {', '.join(sorted(switch.regions))}"
        return "the emergency switch is off everywhere"

    return await _write(request, "/actions", call)


async def _acknowledge(request: Request) -> Response:
    fields = await posted_form(request)
    alert_id, cause = request.path_params["alert_id"], fields.get("cause", "")
    if cause not in CAUSES:
        _flash(request, "error", f"say what alert {alert_id} turned out to be: {', '.join(CAUSES)}")
        return RedirectResponse("/alerts", status_code=303)
    message = pb.AcknowledgeAlertRequest(
        alert_id=alert_id, cause=CAUSES[cause], note=fields.get("note", ""), request_id=fields.get("ticket", "")
    )

    async def call(center: AdminClient) -> str:
        answered = await reads.off_loop(lambda: center.call(lambda admin: admin.AcknowledgeAlert, message))
        return f"{answered.id} acknowledged as {cause} by {answered.acknowledged_by}"

    return await _write(request, "/alerts", call)


async def _decide(request: Request) -> Response:
    fields = await posted_form(request)
    decision, pending_id = request.path_params["decision"], request.path_params["pending_id"]
    if decision not in ("approve", "reject"):
        raise HTTPException(404, f"no such decision {decision!r}: approve or reject")
    message = pb.DecidePendingRequest(pending_id=pending_id, reason=fields.get("reason", ""))
    method = "ApprovePending" if decision == "approve" else "RejectPending"

    async def call(center: AdminClient) -> str:
        decided = await reads.off_loop(
            lambda: center.call(lambda admin: getattr(admin, method), message, idempotent=False)
        )
        return f"{decided.id} {decided.state}: {decided.call} of {decided.promotion_id} asked by {decided.requested_by}"

    return await _write(request, "/approvals", call)


ROUTES = [
    Route("/promotions/{promotion_id}/{action:str}", confirm_freeze, methods=["GET"]),
    Route("/promotions/{promotion_id}/{action:str}", require_user(_set_frozen), methods=["POST"]),
    Route("/emergency/{action:str}", confirm_emergency, methods=["GET"]),
    Route("/emergency/{action:str}", require_user(_switch), methods=["POST"]),
    Route("/alerts/{alert_id}/acknowledge", require_user(_acknowledge), methods=["POST"]),
    Route("/approvals/{pending_id}/{decision:str}", require_user(_decide), methods=["POST"]),
]
