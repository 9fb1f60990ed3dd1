"""Guard rules: a declarative file of checks run on every create and change of a promotion, each of which
may allow, warn, hold the change for a second person's approval, or refuse it. Pure: text in, verdicts
out; the center reads the file, keeps the loaded RuleSet and acts on the verdict.

    load_rules(text, source) -> RuleSet       every problem in the file at once (RulesError), or the rules
    evaluate(rules, proposal) -> Verdict      every rule that fired, and the most severe outcome

The file (guard_rules.toml ships the defaults) is a list of tables:

    [[rule]]
    name = "discount-above-half-the-threshold"   letters, digits, - _ . ; unique
    when = "min_spend > 0 and face_value * 100 > min_spend * 50"
    outcome = "hold"                             allow | warn | hold | refuse
    message = "why it is risky, and what to do"

and, optionally, one table of budget limits per owner (the field `owner_limit` of conditions), in minor
units of money, keyed by the owner's SPIFFE ID, with `default` for every owner not named:

    [owner_limits]
    default = 10_000_000
    "spiffe://quota.example/owner/marketing-lead" = 500_000_000

`when` is a condition of the language in guard_expr over the fields below. Bare names, and `after.`
names, are the promotion as it would be; `before.` names are the promotion as it is (changes only).

Semantics, so that a rule never fires for want of data:
- a rule that reads any `before.` field applies to changes only: on a create it is skipped, whatever
  the rest of its condition says;
- 0 means "not set" (no threshold, no limit, face value unknown, no owner limit) and is the integer 0 in
  conditions, so a rule that needs a value says so (`owner_limit > 0 and ...`): promotions created
  before face values existed have face_value == 0 and must not look like free money;
- a condition that divides by zero is undecided: the rule does not fire and is named in
  `Verdict.undecided` (guard the divisor, `min_spend > 0 and ...`, or multiply instead);
- outcomes rank allow < warn < hold < refuse; the verdict is the most severe of the rules that fired
  (allow when none did), and lists them all in file order.
"""

from __future__ import annotations

import enum
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quota_center.guard_expr import Condition, ExprError, Scope, Type, compile_condition
from quota_common.errors import ConfigError

TERMS: dict[str, Type] = {
    "budget": "int",  # units (COUNT) or minor units of money (AMOUNT)
    "face_value": "int",  # minor units one unit costs the platform; 0 unknown
    "min_spend": "int",  # the spending threshold, minor units; 0 none
    "discount_bps": "int",  # percentage offers, basis points; 0 none
    "max_per_order": "int",  # 0 none
    "per_user_limit": "int",  # units per user; 0 none
    "per_user_orders": "int",  # orders per user; 0 none
    "window_s": "int",  # seconds from start to end
    "regions": "int",  # how many regions
    "exposure": "int",  # the most it can cost, minor units: the budget (AMOUNT), budget x face_value; 0 unknown
    "is_amount": "bool",
    "is_count": "bool",
}
"""The fields of a promotion, bare (as it would be), after.<field> (the same) and before.<field>."""
FIELDS: dict[str, Type] = {**TERMS, "owner_limit": "int", "is_create": "bool", "is_change": "bool"}
"""Every bare name: the terms, the owner's budget limit (0 none configured), and whether it is a create."""
_KEYS = ("name", "when", "outcome", "message")
OWNER_LIMITS = "owner_limits"
OWNER_DEFAULT = "default"
MAX_LIMIT = 2**53 - 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Outcome(enum.IntEnum):
    ALLOW = 0
    WARN = 1
    HOLD = 2
    REFUSE = 3

    @property
    def word(self) -> str:
        """As written in the file."""
        return self.name.lower()


@dataclass(frozen=True)
class Terms:
    """What the guard sees of a promotion. Every limit and value uses 0 for "not set"."""

    kind: str
    """"COUNT" or "AMOUNT"."""
    budget: int
    start_ms: int
    end_ms: int
    regions: int
    face_value: int = 0
    min_spend: int = 0
    discount_bps: int = 0
    max_per_order: int = 0
    per_user_limit: int = 0
    per_user_orders: int = 0


@dataclass(frozen=True)
class Proposal:
    """A create (no `before`) or a change of an existing promotion, and who asks."""

    after: Terms
    before: Terms | None = None
    actor: str = ""
    """Who asks (a SPIFFE ID); carried for the record, not a field of conditions."""
    owner_limit: int = 0
    """The asking owner's budget limit, in the promotion's budget units; 0 when none is configured."""


@dataclass(frozen=True)
class Rule:
    name: str
    outcome: Outcome
    message: str
    condition: Condition
    line: int | None
    """Of its [[rule]] header in the file it came from."""

    @property
    def changes_only(self) -> bool:
        return any(field.startswith("before.") for field in self.condition.fields)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str
    digest: str
    """SHA-256 of the file's text, to record which rules judged a change."""
    owner_limits: Mapping[str, int] = field(default_factory=dict)
    """Budget limits by owner SPIFFE ID, minor units; the key `default` covers everyone not named."""

    def owner_limit(self, owner: str) -> int:
        """The limit of `owner`; 0 (none) when neither it nor a default is configured."""
        return self.owner_limits.get(owner, self.owner_limits.get(OWNER_DEFAULT, 0))


@dataclass(frozen=True)
class Finding:
    rule: str
    outcome: Outcome
    message: str


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    fired: tuple[Finding, ...]
    undecided: tuple[str, ...] = ()
    """Rules whose condition divided by zero, so did not fire."""

    def explain(self) -> str:
        """One line for an answer or a log: the outcome, then each rule that fired and why."""
        reasons = "; ".join(f"{found.rule} ({found.outcome.word}): {found.message}" for found in self.fired)
        return f"{self.outcome.word}: {reasons or 'no rule fired'}"


class RulesError(ConfigError):
    """A rules file that cannot be used; `problems` holds one "source:line: rule n (name): what" each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def evaluate(rules: RuleSet, proposal: Proposal) -> Verdict:
    scope = _scope(proposal)
    fired, undecided = [], []
    for rule in rules.rules:
        if rule.changes_only and proposal.before is None:
            continue
        holds = rule.condition.holds(scope)
        if holds is None:
            undecided.append(rule.name)
        elif holds:
            fired.append(Finding(rule.name, rule.outcome, rule.message))
    outcome = max((found.outcome for found in fired), default=Outcome.ALLOW)
    return Verdict(outcome, tuple(fired), tuple(undecided))


def term_values(terms: Terms) -> dict[str, int]:
    amount = terms.kind == "AMOUNT"
    return {
        "budget": terms.budget,
        "face_value": terms.face_value,
        "min_spend": terms.min_spend,
        "discount_bps": terms.discount_bps,
        "max_per_order": terms.max_per_order,
        "per_user_limit": terms.per_user_limit,
        "per_user_orders": terms.per_user_orders,
        "window_s": (terms.end_ms - terms.start_ms) // 1000,
        "regions": terms.regions,
        "exposure": terms.budget if amount else terms.budget * terms.face_value,
        "is_amount": amount,
        "is_count": terms.kind == "COUNT",
    }


def _scope(proposal: Proposal) -> Scope:
    after = term_values(proposal.after)
    scope = {**after, **{f"after.{name}": value for name, value in after.items()}}
    if proposal.before is not None:
        scope.update({f"before.{name}": value for name, value in term_values(proposal.before).items()})
    creating = proposal.before is None
    return scope | {"owner_limit": proposal.owner_limit, "is_create": creating, "is_change": not creating}


def load_rules(text: str, source: str) -> RuleSet:
    """The rules in `text` (a TOML file's content; `source` names it in messages). RulesError listing every
    problem, each with its line, when anything is wrong: nothing of a bad file is used."""
    document = parse_toml(text, source)
    loader = _Loader(text, source)
    rules = loader.load(document)
    limits = loader.owner_limits(document.get(OWNER_LIMITS, {}))
    if loader.problems:
        raise RulesError([problem for _, problem in sorted(loader.problems, key=lambda found: found[0])])
    return RuleSet(rules, source, hashlib.sha256(text.encode()).hexdigest(), limits)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """A rules file's tables; RulesError naming the line when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"at line (\d+)", str(error))
        line = int(found.group(1)) if found else max(len(text.splitlines()), 1)  # "at end of document"
        raise RulesError([f"{source}:{line}: not valid TOML: {error}"]) from None


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.layout, self.source = Layout(text), source
        self.problems: list[tuple[int, str]] = []
        """With their lines (0 unknown), to be sorted by line."""
        self.names: set[str] = set()

    def report(self, line: int | None, who: str, why: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append((line or 0, f"{where}: {who}{why}"))

    def load(self, document: dict[str, Any]) -> tuple[Rule, ...]:
        for key in document.keys() - {"rule", OWNER_LIMITS}:
            self.report(
                self.layout.key(None, key), "", f"unknown top-level key {key!r}; only [[rule]] and [{OWNER_LIMITS}]"
            )
        tables = document.get("rule")
        if isinstance(tables, dict):
            self.report(self.layout.key(None, "rule"), "", "write each rule as [[rule]], with double brackets")
            return ()
        if not isinstance(tables, list) or not tables or not all(isinstance(table, dict) for table in tables):
            self.report(self.layout.key(None, "rule"), "", "no [[rule]] tables; an empty file would allow anything")
            return ()
        self.layout.expect(len(tables))
        rules = (self.rule(index, table) for index, table in enumerate(tables))
        return tuple(rule for rule in rules if rule is not None)

    def owner_limits(self, table: object) -> dict[str, int]:
        line = self.layout.key(None, OWNER_LIMITS)
        if not isinstance(table, dict):
            self.report(line, "", f"[{OWNER_LIMITS}] must be a table of owner = limit")
            return {}
        limits = {}
        for owner, limit in table.items():
            if owner != OWNER_DEFAULT and not owner.startswith("spiffe://"):
                self.report(line, f"[{OWNER_LIMITS}] {owner!r}: ", "name an owner by its SPIFFE ID, or 'default'")
            elif isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
                self.report(line, f"[{OWNER_LIMITS}] {owner!r}: ", f"a limit is an integer in 1..{MAX_LIMIT}")
            else:
                limits[owner] = limit
        return limits

    def rule(self, index: int, table: dict[str, Any]) -> Rule | None:
        name, header, before = table.get("name"), self.layout.header(index), len(self.problems)
        who = f"rule {index + 1}" + (f" ({name!r})" if isinstance(name, str) and name else "") + ": "

        def problem(key: str | None, why: str) -> None:
            self.report((self.layout.key(index, key) if key else None) or header, who, why)

        for key in sorted(table.keys() - set(_KEYS)):
            problem(key, f"unknown key {key!r}; a rule has {', '.join(_KEYS)}")
        for key in _KEYS:
            if key not in table:
                problem(None, f"missing {key!r}")
            elif not isinstance(table[key], str) or not table[key].strip():
                problem(key, f"{key!r} must be a non-empty string")
        if isinstance(name, str) and name and not NAME.fullmatch(name):
            problem("name", "a name is up to 64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        elif isinstance(name, str) and name in self.names:
            problem("name", "an earlier rule has this name")
        if isinstance(name, str):
            self.names.add(name)
        outcome = table.get("outcome")
        if isinstance(outcome, str) and outcome not in {known.word for known in Outcome}:
            problem("outcome", f"unknown outcome {outcome!r}; one of allow, warn, hold, refuse")
        condition = None
        if isinstance(table.get("when"), str) and table["when"].strip():
            try:
                condition = compile_condition(table["when"], FIELDS, TERMS)
            except ExprError as error:
                problem("when", str(error))
        if len(self.problems) > before or condition is None:
            return None
        return Rule(table["name"], Outcome[table["outcome"].upper()], table["message"], condition, header)


class Layout:
    """Where each [[rule]] header and each key is in the text (tomllib gives no positions): line numbers,
    counted from 1, found by a scan that knows TOML's multi-line strings. Missing when the scan cannot
    tell (e.g. rules written as an inline array), and messages then fall back to the header or no line."""

    _HEADER = re.compile(r"""\s*\[\[\s*(rule|"rule"|'rule')\s*\]\]""")
    _TABLE = re.compile(r"""\s*\[+\s*["']?([A-Za-z0-9_-]+)""")
    _KEY = re.compile(r"""\s*["']?([A-Za-z0-9_-]+)["']?\s*[=.]""")

    def __init__(self, text: str) -> None:
        self.headers: list[int] = []
        self.keys: dict[tuple[int | None, str], int] = {}
        rule: int | None = None
        inside: str | None = None  # the delimiter of the multi-line string the scan is in
        for number, line in enumerate(text.splitlines(), start=1):
            if inside is not None:
                inside = None if inside in line else inside
                continue
            if self._HEADER.match(line):
                self.headers.append(number)
                rule = len(self.headers) - 1
            elif table := self._TABLE.match(line):
                self.keys.setdefault((None, table.group(1)), number)
                rule = -1  # keys of another table belong to no rule
            elif key := self._KEY.match(line):
                self.keys.setdefault((rule, key.group(1)), number)
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2:
                    inside = delimiter
                    break

    def expect(self, rules: int) -> None:
        """Forget the rules' positions when the scan did not find one header per rule."""
        if len(self.headers) != rules:
            self.headers = []
            self.keys = {where: line for where, line in self.keys.items() if where[0] is None}

    def header(self, index: int) -> int | None:
        return self.headers[index] if index < len(self.headers) else None

    def key(self, rule: int | None, key: str) -> int | None:
        return self.keys.get((rule, key))
