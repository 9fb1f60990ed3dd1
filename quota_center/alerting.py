"""Alert rules: a declarative file of checks over what regions report, each of which raises an alert and may
freeze the promotion. Pure: text in, rules out; snapshots in, firings out. The alert engine takes the
snapshots, keeps the book and acts.

    load_alert_rules(text, source) -> AlertRuleSet    every problem in the file at once (RulesError)
    Watch().observe(rules, snapshot) -> [Firing]      keeps the samples the rates need, per promotion

The file (alert_rules.toml ships the defaults) is a list of tables:

    [[rule]]
    name = "free-money-burning"         letters, digits, - _ . ; unique
    kind = "burn_rate"                  burn_rate | budget_low | concentration | below_floor
    when = "min_spend == 0"             optional: a guard condition over the promotion's terms
    action = "freeze"                   alert | freeze
    message = "what to do"              optional advice, after what was seen
    window_s = 60 ...                   the kind's thresholds, whole numbers (0: that check is off)

Thresholds by kind (a share is in percent, _bps in basis points of the budget):
- burn_rate: window_s; plan_pct (consumption over the window above this % of the plan: the budget spread
  over the promotion's window, or hourly_cap per hour when paced hourly); trailing_pct with trailing_s
  (above this % of the rate over the trailing_s before the window); min_share_bps (the window consumed at
  least this much of the budget, so a quiet promotion never fires).
- budget_low: left_pct (less than this % of the budget left); time_to_empty_s with window_s (at the rate
  over the window, the budget is spent within this long).
- concentration: share_pct (one region consumed more than this % of the whole); min_share_bps (once the
  consumption passes this much of the budget); only promotions with two regions or more.
- below_floor: min_increase (a region's count of order lines below the price floor rose by this much).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quota_center.gate import terms
from quota_center.guard import NAME, TERMS, Layout, RulesError, parse_toml, term_values
from quota_center.guard_expr import Condition, ExprError, compile_condition
from quota_center.guard_file import WatchedRules
from quota_common.model import Promotion
from quota_common.policy import Pacing


class Kind(enum.Enum):
    BURN_RATE = "burn_rate"
    BUDGET_LOW = "budget_low"
    CONCENTRATION = "concentration"
    BELOW_FLOOR = "below_floor"


FREEZE, ALERT = "freeze", "alert"
_COMMON = ("name", "kind", "when", "action", "message")
_THRESHOLDS: dict[Kind, tuple[str, ...]] = {
    Kind.BURN_RATE: ("window_s", "plan_pct", "trailing_pct", "trailing_s", "min_share_bps"),
    Kind.BUDGET_LOW: ("left_pct", "time_to_empty_s", "window_s"),
    Kind.CONCENTRATION: ("share_pct", "min_share_bps"),
    Kind.BELOW_FLOOR: ("min_increase",),
}
_TRIGGERS: dict[Kind, tuple[str, ...]] = {
    Kind.BURN_RATE: ("plan_pct", "trailing_pct"),
    Kind.BUDGET_LOW: ("left_pct", "time_to_empty_s"),
    Kind.CONCENTRATION: ("share_pct",),
    Kind.BELOW_FLOOR: ("min_increase",),
}
"""At least one of these is set, or the rule could never fire."""
_NEEDS = {"trailing_pct": "trailing_s", "plan_pct": "window_s", "time_to_empty_s": "window_s"}
"""A threshold that is meaningless without another."""


@dataclass(frozen=True)
class AlertRule:
    name: str
    kind: Kind
    action: str
    message: str
    condition: Condition | None
    thresholds: dict[str, int]
    line: int | None

    def get(self, key: str) -> int:
        return self.thresholds.get(key, 0)

    def applies(self, promotion: Promotion) -> bool:
        return self.condition is None or self.condition.holds(term_values(terms(promotion))) is True


@dataclass(frozen=True)
class AlertRuleSet:
    rules: tuple[AlertRule, ...]
    source: str
    digest: str

    @property
    def horizon_s(self) -> int:
        """How far back the rates look: the samples older than this are of no use."""
        return max((rule.get("window_s") + rule.get("trailing_s") for rule in self.rules), default=0)


@dataclass(frozen=True)
class Snapshot:
    """What the center knows of a promotion at one moment: each region's net consumption and below-floor count."""

    promotion: Promotion
    at_ms: int
    consumed: dict[str, int]
    below_floor: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Firing:
    rule: AlertRule
    promotion_id: str
    region: str
    """Empty: the promotion as a whole."""
    message: str


def load_alert_rules(text: str, source: str) -> AlertRuleSet:
    """The rules in `text` (a TOML file's content; `source` names it in messages); RulesError listing every
    problem with its line when anything is wrong: nothing of a bad file is used."""
    document = parse_toml(text, source)
    layout, problems, rules, names = Layout(text), [], [], set()
    tables = document.get("rule")
    for key in document.keys() - {"rule"}:
        problems.append((layout.key(None, key) or 0, f"unknown top-level key {key!r}; only [[rule]] tables"))
    if not isinstance(tables, list) or not tables or not all(isinstance(table, dict) for table in tables):
        problems.append((layout.key(None, "rule") or 0, "no [[rule]] tables; write each rule as [[rule]]"))
        tables = []
    layout.expect(len(tables))
    for index, table in enumerate(tables):
        found: list[tuple[int, str]] = []
        rule = _rule(table, layout, index, found)
        if rule is not None and rule.name in names:
            found.append((rule.line or 0, f"rule {index + 1} ({rule.name!r}): an earlier rule has this name"))
        problems.extend(found)
        if rule is not None and not found:
            names.add(rule.name)
            rules.append(rule)
    if problems:
        raise RulesError([f"{source}:{line}: {why}" if line else f"{source}: {why}" for line, why in sorted(problems)])
    return AlertRuleSet(tuple(rules), source, hashlib.sha256(text.encode()).hexdigest())


def _rule(table: dict[str, Any], layout: Layout, index: int, problems: list[tuple[int, str]]) -> AlertRule | None:
    name = table.get("name")
    who = f"rule {index + 1}" + (f" ({name!r})" if isinstance(name, str) and name else "")
    header = layout.header(index)

    def problem(key: str | None, why: str) -> None:
        problems.append(((layout.key(index, key) if key else None) or header or 0, f"{who}: {why}"))

    if not isinstance(name, str) or not NAME.fullmatch(name):
        problem("name" if "name" in table else None, "a name of up to 64 letters, digits, '-', '_' or '.' is needed")
    kinds = {kind.value: kind for kind in Kind}
    kind = kinds.get(table.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        problem("kind" if "kind" in table else None, f"kind must be one of {', '.join(kinds)}")
    if table.get("action") not in (ALERT, FREEZE):
        problem("action" if "action" in table else None, "action must be alert or freeze")
    for key in ("when", "message"):
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            problem(key, f"{key!r} must be a non-empty string")
    condition = None
    if isinstance(table.get("when"), str) and table["when"].strip():
        try:
            condition = compile_condition(table["when"], TERMS, {})
        except ExprError as error:
            problem("when", str(error))
    thresholds = {key: value for key, value in table.items() if key not in _COMMON}
    if kind is not None:
        _check_thresholds(kind, thresholds, problem)
    if problems:
        return None
    assert kind is not None
    assert isinstance(name, str)
    return AlertRule(name, kind, table["action"], table.get("message", ""), condition, thresholds, header)


def _check_thresholds(kind: Kind, thresholds: dict[str, Any], problem: Callable[[str | None, str], None]) -> None:
    known = _THRESHOLDS[kind]
    for key, value in thresholds.items():
        if key not in known:
            problem(key, f"unknown key {key!r}; a {kind.value} rule has {', '.join(_COMMON + known)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problem(key, f"{key!r} must be a whole number, 0 or more")
    if not any(thresholds.get(key) for key in _TRIGGERS[kind]):
        problem(None, f"a {kind.value} rule needs {' or '.join(_TRIGGERS[kind])} above 0, or it never fires")
    for key, needed in _NEEDS.items():
        if key in known and thresholds.get(key) and not thresholds.get(needed):
            problem(key, f"{key!r} needs {needed!r} above 0")


class Watch:
    """The samples each promotion's rates need, kept between evaluations (the leader's memory only: a new
    leader starts from each promotion's start, as if it had consumed evenly since)."""

    def __init__(self) -> None:
        self._samples: dict[str, list[tuple[int, int]]] = {}
        """Per promotion, (at_ms, total consumed), oldest first."""
        self._floors: dict[tuple[str, str], int] = {}

    def observe(self, rules: AlertRuleSet, snapshot: Snapshot) -> list[Firing]:
        promotion = snapshot.promotion
        history = self._samples.setdefault(promotion.id, [])
        total = sum(snapshot.consumed.values())
        fired: list[Firing] = []
        for rule in rules.rules:
            if rule.applies(promotion):
                fired.extend(_check(rule, snapshot, total, history, self._floors))
        history.append((snapshot.at_ms, total))
        horizon_ms = rules.horizon_s * 1000
        while len(history) > 1 and history[1][0] <= snapshot.at_ms - horizon_ms:
            history.pop(0)
        for region, count in snapshot.below_floor.items():
            self._floors[(promotion.id, region)] = count
        return fired

    def forget(self, keep: set[str]) -> None:
        """Drops the samples of promotions no longer watched."""
        self._samples = {key: value for key, value in self._samples.items() if key in keep}
        self._floors = {key: value for key, value in self._floors.items() if key[0] in keep}


def _since(history: list[tuple[int, int]], promotion: Promotion, now_ms: int, window_s: int) -> tuple[int, int]:
    """The sample a window of `window_s` starts at: the newest at or before its start, else the oldest there
    is (a window not yet full), else the promotion's start with nothing consumed."""
    start = now_ms - window_s * 1000
    older = [sample for sample in history if sample[0] <= start]
    if older:
        return older[-1]
    return history[0] if history else (min(promotion.start_ms, now_ms), 0)


def _check(
    rule: AlertRule, snapshot: Snapshot, total: int, history: list[tuple[int, int]], floors: dict[tuple[str, str], int]
) -> list[Firing]:
    promotion, now = snapshot.promotion, snapshot.at_ms

    def fire(message: str, region: str = "") -> list[Firing]:
        advice = f"; {rule.message}" if rule.message else ""
        return [Firing(rule, promotion.id, region, f"{rule.name}: {message}{advice}")]

    if rule.kind is Kind.BURN_RATE:
        return fire(seen) if (seen := _burn(rule, promotion, now, total, history)) else []
    if rule.kind is Kind.BUDGET_LOW:
        return fire(seen) if (seen := _low(rule, promotion, now, total, history)) else []
    if rule.kind is Kind.CONCENTRATION:
        return [
            found for region, seen in _concentrated(rule, promotion, snapshot, total) for found in fire(seen, region)
        ]
    rising = []
    for region, count in sorted(snapshot.below_floor.items()):
        before = floors.get((promotion.id, region), 0)
        rose = count - before if count >= before else count  # fewer: a new ledger life, counting from 0
        if rose >= rule.get("min_increase") and rose > 0:
            # Whoever reads it first asks whether money went out: with blocking on, none did.
            fate = "refused: the promotion blocks them" if promotion.block_below_floor else "let through: sold below it"
            seen = f"{rose} order line(s) below the price floor in {region}, {fate} ({count} this ledger life)"
            rising.extend(fire(seen, region))
    return rising


def _burn(rule: AlertRule, promotion: Promotion, now: int, total: int, history: list[tuple[int, int]]) -> str:
    since_ms, then = _since(history, promotion, now, rule.get("window_s"))
    used, elapsed = total - then, now - since_ms
    if elapsed <= 0 or used <= 0 or used * 10_000 < rule.get("min_share_bps") * promotion.budget:
        return ""
    rate = f"{used} in {elapsed / 1000:g} s"
    if promotion.pacing is Pacing.HOURLY_CAP:
        plan, plan_ms, plan_text = promotion.hourly_cap, 3_600_000, f"{promotion.hourly_cap} per hour"
    else:
        plan, plan_ms = promotion.budget, max(promotion.end_ms - promotion.start_ms, 1)
        plan_text = f"{promotion.budget} over {plan_ms / 1000:g} s"
    if rule.get("plan_pct") and used * plan_ms * 100 > rule.get("plan_pct") * plan * elapsed:
        return f"consumed {rate}, above {rule.get('plan_pct')}% of the plan ({plan_text})"
    if rule.get("trailing_pct"):
        before_ms, before = _since(history, promotion, since_ms, rule.get("trailing_s"))
        trailed, trail_ms = then - before, since_ms - before_ms
        if trailed > 0 and trail_ms > 0 and used * trail_ms * 100 > rule.get("trailing_pct") * trailed * elapsed:
            return (
                f"consumed {rate}, above {rule.get('trailing_pct')}% of the rate before "
                f"({trailed} in {trail_ms / 1000:g} s)"
            )
    return ""


def _low(rule: AlertRule, promotion: Promotion, now: int, total: int, history: list[tuple[int, int]]) -> str:
    left = promotion.budget - total
    if rule.get("left_pct") and left * 100 < rule.get("left_pct") * promotion.budget:
        return f"{max(left, 0)} of {promotion.budget} left, under {rule.get('left_pct')}%"
    if rule.get("time_to_empty_s"):
        since_ms, then = _since(history, promotion, now, rule.get("window_s"))
        used, elapsed = total - then, now - since_ms
        if used > 0 and elapsed > 0 and left * elapsed < rule.get("time_to_empty_s") * 1000 * used:
            return (
                f"{left} left and {used} consumed in {elapsed / 1000:g} s: empty in about "
                f"{left * elapsed // used // 1000} s, under {rule.get('time_to_empty_s')} s"
            )
    return ""


def _concentrated(rule: AlertRule, promotion: Promotion, snapshot: Snapshot, total: int) -> list[tuple[str, str]]:
    if len(promotion.regions) < 2 or total <= 0 or total * 10_000 < rule.get("min_share_bps") * promotion.budget:
        return []
    return [
        (region, f"{region} consumed {used} of {total} ({used * 100 // total}%), above {rule.get('share_pct')}%")
        for region, used in sorted(snapshot.consumed.items())
        if used * 100 > rule.get("share_pct") * total
    ]


SHIPPED_ALERT_RULES = "alert_rules.toml"


@functools.cache
def shipped_alert_rules() -> AlertRuleSet:
    """The rules a center evaluates when it is given no file (quota_center/alert_rules.toml)."""
    text = (importlib.resources.files("quota_center") / SHIPPED_ALERT_RULES).read_text()
    return load_alert_rules(text, f"(shipped) {SHIPPED_ALERT_RULES}")


class AlertRulesFile(WatchedRules[AlertRuleSet]):
    """The alert rules file (--alert-rules)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, load_alert_rules, "--alert-rules", "alert rules")
