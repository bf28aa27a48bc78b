"""IAM identity policies: the JSON grammar (``Version``, ``Statement`` with ``Effect``, ``Action`` /
``NotAction``, ``Resource`` / ``NotResource``) and IAM's evaluation: an explicit ``Deny`` wins, then an
``Allow``, and anything not allowed is denied (implicit deny).

Wildcards are IAM's: ``*`` any run of characters, ``?`` one character; actions match regardless of
case, resources exactly. ``Condition`` blocks are refused when the policy is loaded rather than ignored
(ignoring one would grant more, or deny less, than its author meant).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mainsail.errors import MainsailError

VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition", "Principal",
                   "NotPrincipal"}


class PolicyError(MainsailError):
    """A policy document that does not follow IAM's grammar, or uses what mainsail does not evaluate."""


class Decision(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit deny"
    IMPLICIT_DENY = "implicit deny"


def _wildcard(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) and item for item in items):
        raise PolicyError(f"{where} must be a non-empty string or a list of non-empty strings")
    return list(items)


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[re.Pattern[str], ...]
    negate_actions: bool
    resources: tuple[re.Pattern[str], ...]
    negate_resources: bool

    def applies(self, action: str, resource: str) -> bool:
        action_hit = any(p.fullmatch(action) for p in self.actions) != self.negate_actions
        return action_hit and any(p.fullmatch(resource) for p in self.resources) != self.negate_resources


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    source: str = ""

    def evaluate(self, action: str, resource: str) -> Decision:
        """IAM's decision for one action on one resource."""
        allowed = False
        for statement in self.statements:
            if statement.applies(action, resource):
                if statement.effect == "Deny":
                    return Decision.EXPLICIT_DENY
                allowed = True
        return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def _statement(raw: Any, where: str) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    if "Condition" in raw:
        raise PolicyError(f"{where}: Condition is not supported by mainsail (a policy must not depend on it)")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError(f"{where}: Principal belongs in resource policies; an identity policy has none")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"{where}: Effect must be Allow or Deny, not {effect!r}")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError(f"{where} needs exactly one of Action and NotAction")
    if ("Resource" in raw) == ("NotResource" in raw):
        raise PolicyError(f"{where} needs exactly one of Resource and NotResource")
    action_key = "Action" if "Action" in raw else "NotAction"
    resource_key = "Resource" if "Resource" in raw else "NotResource"
    actions = _strings(raw[action_key], f"{where}.{action_key}")
    for action in actions:
        if action != "*" and ":" not in action:
            raise PolicyError(f"{where}.{action_key}: {action!r} is not service:Action (e.g. sagemaker:InvokeEndpoint)")
    resources = _strings(raw[resource_key], f"{where}.{resource_key}")
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            raise PolicyError(f"{where}.{resource_key}: {resource!r} is not an ARN (arn:aws:...) or *")
    return Statement(effect, tuple(_wildcard(a, ignore_case=True) for a in actions), action_key == "NotAction",
                     tuple(_wildcard(r, ignore_case=False) for r in resources), resource_key == "NotResource")


def parse_policy(document: Any, source: str = "policy") -> Policy:
    """A policy from its decoded JSON document."""
    if not isinstance(document, dict):
        raise PolicyError(f"{source}: a policy is a JSON object with a Statement")
    version = document.get("Version", VERSIONS[0])
    if version not in VERSIONS:
        raise PolicyError(f"{source}: Version must be one of {', '.join(VERSIONS)}, not {version!r}")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"{source} has unknown keys: {', '.join(sorted(unknown))}")
    raw = document.get("Statement")
    statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(statements, list) or not statements:
        raise PolicyError(f"{source}: Statement must be an object or a non-empty list of objects")
    return Policy(tuple(_statement(s, f"{source}: Statement[{i}]") for i, s in enumerate(statements)), source)


def load_policy(path: Path) -> Policy:
    """A policy from a JSON file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read the policy {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PolicyError(f"the policy {path} is not valid JSON: {exc}") from None
    return parse_policy(document, str(path))
