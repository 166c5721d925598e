"""Every Redis key the bridge writes is named in ``bridge/keys.py``, documented in
``docs/internals.md``, and spelled as it always was (users' Redis already holds these keys)."""

from __future__ import annotations

import inspect
import re
from fnmatch import fnmatchcase
from pathlib import Path

from bridge import keys
from bridge.defaults import KEY_PREFIX

ROOT = Path(__file__).resolve().parent.parent


def key_names() -> dict[str, str]:
    """Each key of ``bridge.keys`` (constant or function) → its text, placeholders for ids."""
    out = {}
    for name, value in vars(keys).items():
        if name.endswith("_PATTERN") or name.startswith("_"):
            continue
        if inspect.isfunction(value) and value.__module__ == keys.__name__:
            params = inspect.signature(value).parameters
            out[name] = value(*(f"<{p}>" for p in params))
        elif name.isupper() and isinstance(value, str) and name != "KEY_PREFIX":
            out[name] = value
    return out


def documented_keys() -> set[str]:
    """The keys in the first column of the table under ``## Redis keys`` in the internals."""
    text = (ROOT / "docs" / "internals.md").read_text()
    section = text.split("## Redis keys", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {key for row in rows for key in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def test_every_key_is_in_the_internals_table_and_the_table_has_no_other():
    written = {text.removeprefix(KEY_PREFIX) for text in key_names().values()}
    assert all(text.startswith(KEY_PREFIX) for text in key_names().values())
    assert len(written) == len(key_names()), "two names for one key"
    documented = documented_keys()
    assert written - documented == set(), "keys missing from docs/internals.md"
    assert documented - written == set(), "docs/internals.md lists keys bridge/keys.py lacks"
    heading = (ROOT / "docs" / "internals.md").read_text().split("## Redis keys", 1)[1]
    assert heading.startswith(f" (prefix `{KEY_PREFIX}`)")


def test_the_table_check_sees_a_missing_key():
    # the check above must be able to fail: a key the table does not list
    assert "d:<delivery_id>:log" in documented_keys()
    assert "d:<delivery_id>:notes" not in documented_keys()
    assert key_names()["history"] == f"{KEY_PREFIX}d:<delivery_id>:log"


def test_key_names_are_the_ones_stored_redis_already_holds():
    # A renamed key would orphan every delivery, index and window already in a user's Redis.
    assert keys.delivery("dlv_1") == "oliai-bridge:d:dlv_1"
    assert keys.history("dlv_1") == "oliai-bridge:d:dlv_1:log"
    assert keys.raw("r0a") == "oliai-bridge:raw:r0a"
    assert keys.dedup("leads", "e:1") == "oliai-bridge:dedup:leads:e:1"
    assert keys.RECEIVED == "oliai-bridge:idx:received"
    assert keys.RECEIVED_STREAM == "oliai-bridge:idx:recv"
    assert keys.FAILED == "oliai-bridge:idx:failed"
    assert keys.ACTIVE == "oliai-bridge:idx:active"
    assert keys.failed_by_route("leads") == "oliai-bridge:idx:failed:route:leads"
    assert keys.failed_by_reason("invalid") == "oliai-bridge:idx:failed:reason:invalid"
    assert keys.failed_by_route_and_reason("ab12") == "oliai-bridge:tmp:failed:ab12"
    assert keys.lease("dlv_1") == "oliai-bridge:lease:dlv_1"
    assert keys.rate_window("k1", "general") == "oliai-bridge:rl:k1:general"
    assert keys.rate_window("k1", "bulk") == "oliai-bridge:rl:k1:bulk"
    assert keys.pause("k1") == "oliai-bridge:pause:k1"
    assert keys.audience("k1", "n1") == "oliai-bridge:aud:k1:n1"
    assert keys.audience_lock("k1", "n1") == "oliai-bridge:aud:k1:n1:lock"
    assert keys.flow("k1", "n1") == "oliai-bridge:flow:k1:n1"
    assert keys.campaign_rate("leads", 29468160) == "oliai-bridge:camp:rate:leads:29468160"
    assert keys.campaign_window("leads", 1768089600) == "oliai-bridge:camp:win:leads:1768089600"
    assert keys.REAPER_LOCK == "oliai-bridge:reaper:lock"
    assert keys.REAPER_TRIMMED == "oliai-bridge:reaper:trimmed"
    assert keys.STATS == "oliai-bridge:stats"


def test_the_narrowed_failed_pattern_matches_route_and_reason_indexes_only():
    pattern = keys.FAILED_NARROWED_PATTERN
    assert fnmatchcase(keys.failed_by_route("leads"), pattern)
    assert fnmatchcase(keys.failed_by_reason("invalid"), pattern)
    others = [v for k, v in key_names().items() if k not in ("failed_by_route", "failed_by_reason")]
    assert [k for k in others if fnmatchcase(k, pattern)] == []


def test_no_other_module_builds_a_key_from_the_prefix():
    users = []
    for package in ("bridge", "jobs", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if "KEY_PREFIX" in text or re.search(re.escape(KEY_PREFIX) + r"\w", text):
                users.append(str(path.relative_to(ROOT)))
    assert users == ["bridge/defaults.py", "bridge/keys.py"]
