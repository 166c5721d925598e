"""Every setting of the sandbox in one object, built from the command line; some change at run time.

The runtime-changeable settings (``RUNTIME_FIELDS``) are what ``POST /_sandbox/config`` accepts;
the others (address, keys, seed) are fixed for the life of the process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from sandbox import DEMO_KEY

FAIL_AFTER_COMMIT_MODES = ("500", "drop", "mixed")

#: Settings that ``POST /_sandbox/config`` may change while the server runs, with their type.
RUNTIME_FIELDS: dict[str, type] = {
    "fail_rate": float,
    "fail_after_commit_rate": float,
    "fail_after_commit_mode": str,
    # Faults after commit only for paths under this prefix ("/v1/campaigns"); "" for every path.
    "fail_after_commit_path": str,
    "latency_ms": float,
    "general_limit": int,
    "bulk_limit": int,
    "rate_window": float,
    "quota_exhausted": bool,
    # Not in the original list, but tests need them short and operators may want them long.
    "bulk_max_items": int,
    "max_body_bytes": int,
    "campaign_seconds_per_contact": float,
    "campaign_max_seconds": float,
    "import_delay_ms": float,
    # Rows the API refuses for reasons no client can check first (a do-not-call list): tests
    # of per-row outcomes need a refusal that passes every documented rule.
    "refused_phones": list,
}


@dataclass
class Options:
    """The sandbox's configuration; defaults are the documented production numbers."""

    host: str = "127.0.0.1"
    port: int = 8787
    keys: list[str] = field(default_factory=lambda: [DEMO_KEY])
    revoked_keys: list[str] = field(default_factory=list)
    expired_keys: list[str] = field(default_factory=list)
    rate_window: float = 60.0
    general_limit: int = 60
    bulk_limit: int = 10
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    fail_after_commit_rate: float = 0.0
    fail_after_commit_mode: str = "mixed"
    fail_after_commit_path: str = ""
    bulk_max_items: int = 100
    max_body_bytes: int = 1024 * 1024
    quota_exhausted: bool = False
    seed: int | None = None
    campaign_seconds_per_contact: float = 1.0
    campaign_max_seconds: float = 60.0
    import_delay_ms: float = 200.0
    refused_phones: list[str] = field(default_factory=list)
    quiet: bool = False

    def __post_init__(self) -> None:
        problems = _problems({name: getattr(self, name) for name in RUNTIME_FIELDS})
        if not self.keys:
            problems.append("at least one API key is required")
        if problems:
            raise ValueError("; ".join(problems))

    def __repr__(self) -> str:
        # Keys are secrets in spirit even here: show how many, never which.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("keys")}
        return f"Options(keys={len(self.keys)}, {shown})"

    def runtime(self) -> dict:
        """The current values of the runtime-changeable settings."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}

    def update(self, changes: dict) -> dict:
        """Apply ``changes`` all or nothing; raise ``ValueError`` naming every bad entry."""
        if not isinstance(changes, dict):
            raise ValueError("config must be a JSON object")
        problems = [f"unknown setting {name!r}" for name in changes if name not in RUNTIME_FIELDS]
        problems += _problems({k: v for k, v in changes.items() if k in RUNTIME_FIELDS})
        if problems:
            raise ValueError("; ".join(problems))
        for name, value in changes.items():
            wanted = RUNTIME_FIELDS[name]
            setattr(self, name, wanted(value) if wanted is not bool else value)
        return self.runtime()


def _problems(values: dict) -> list[str]:
    problems = [_problem(name, value) for name, value in values.items()]
    return [problem for problem in problems if problem]


def _problem(name: str, value: object) -> str | None:
    """What is wrong with one runtime setting's new value, or None."""
    wanted = RUNTIME_FIELDS[name]
    if wanted is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return None
        return f"{name} must be a list of strings"
    if wanted is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if name == "fail_after_commit_path":
        if not isinstance(value, str) or (value and not value.startswith("/")):
            return f'{name} must be a path prefix such as "/v1/campaigns", or ""'
        return None
    if wanted is str:
        if value not in FAIL_AFTER_COMMIT_MODES:
            return f"{name} must be one of {', '.join(FAIL_AFTER_COMMIT_MODES)}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} must be a number"
    return _number_problem(name, value, wanted)


def _number_problem(name: str, value: float, wanted: type) -> str | None:
    """What is wrong with a numeric setting's value, or None."""
    if not math.isfinite(value):  # first: int() of NaN or infinity raises
        return f"{name} must be a finite number"
    if wanted is int and value != int(value):
        return f"{name} must be an integer"
    if name.endswith("_rate") and not 0 <= value <= 1:
        return f"{name} must be between 0 and 1"
    if name in ("general_limit", "bulk_limit", "bulk_max_items", "max_body_bytes"):
        return f"{name} must be at least 1" if value < 1 else None
    if name == "rate_window" and value <= 0:
        return f"{name} must be greater than 0"
    if value < 0:
        return f"{name} must not be negative"
    return None
