"""One config path: TOML file + environment → validated ``Settings``, passed down everywhere.

``${VAR}`` (or ``${VAR:-default}``) inside any TOML string reads the environment, so secrets need
not be written into the file. ``OLIAI_API_KEY``, ``OLIAI_BASE_URL`` and ``REDIS_URL`` in the
environment win over the file. Every problem is collected and reported at once, named by its
place (``routes[typeform-leads].audience_id``); no secret value is ever part of a message.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import jmespath
import phonenumbers
from jmespath.exceptions import JMESPathError
from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from bridge import defaults
from bridge.calling_hours import CallingHours, zone
from bridge.exceptions import ConfigError
from bridge.settings import (
    CONTACT_FIELDS,
    LANGUAGE,
    ROUTE_NAME,
    CampaignSettings,
    DeliverySettings,
    OliAISettings,
    Route,
    Settings,
)
from bridge.sources import get_source, source_names

FORMATS = ("json", "text")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SSL_CERT_REQS = ("required", "optional", "none")

#: Every environment variable the bridge reads itself, and what it is for. (A config may read
#: any other with ``${VAR}``.) docs/configuration.md and app.json are tested against this list.
ENVIRONMENT = {
    "BRIDGE_CONFIG": "Path of the TOML config file (default ./config.toml).",
    "BRIDGE_CONFIG_TOML": (
        "The TOML config itself, instead of a file: for platforms that deploy the repository "
        "as it is. Not together with BRIDGE_CONFIG."
    ),
    "REDIS_URL": (
        "The Redis every process shares: redis://, rediss:// (TLS) or unix://. "
        "Unset: oliai-bridge dev starts an embedded one."
    ),
    "REDIS_SSL_CERT_REQS": (
        "Certificate check for a rediss:// URL: required (default), optional or none "
        "(managed Redis with a self-signed certificate, such as Heroku's)."
    ),
    "REDIS_SSL_CA_CERTS": "A CA bundle file to verify a rediss:// server's certificate with.",
    "OLIAI_API_KEY": "The OliAI API key; wins over oliai.api_key in the file.",
    "OLIAI_BASE_URL": "The OliAI API's base URL; wins over oliai.base_url in the file.",
    "PORT": "Port the web process listens on (default 8000).",
    "WEB_CONCURRENCY": "gunicorn worker processes of the web process (default 2).",
    "LOG_LEVEL": "DEBUG, INFO (default), WARNING or ERROR.",
    "LOG_FORMAT": "json (default: one object per line) or text (default of oliai-bridge dev).",
}

# Settings that may stay empty when their ${VAR} is unset (dev runs the sandbox without a key).
OPTIONAL_ENV = {"oliai.api_key", "bridge.admin_token", "delivery.alert_webhook_url"}
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --- schemas -------------------------------------------------------------------------------


class OliAISchema(Schema):
    class Meta:
        unknown = RAISE

    base_url = fields.Url(require_tld=False, schemes={"http", "https"})
    api_key = fields.String(allow_none=True)
    default_region = fields.String()
    rate_window_seconds = fields.Float(validate=validate.Range(min=0.1, max=3600))
    general_per_minute = fields.Integer(validate=validate.Range(min=1, max=100_000))
    bulk_per_minute = fields.Integer(validate=validate.Range(min=1, max=100_000))
    timeout_seconds = fields.Float(validate=validate.Range(min=0.1, max=120))

    @validates_schema
    def _region(self, data, **kwargs):
        region = data.get("default_region")
        if region is not None and not valid_region(region):
            raise ValidationError(f"unknown region code {region!r}", "default_region")


def route_quota() -> fields.Integer:
    """``max_requests_per_minute``: in ``[bridge]`` for every route, or a route's own."""
    return fields.Integer(
        strict=True,
        validate=validate.Range(
            min=1,
            max=1_000_000,
            error="requests a route accepts a minute, a whole number from {min} to {max}",
        ),
    )


def address_quota() -> fields.Integer:
    """``max_requests_per_minute_per_ip``: in ``[bridge]`` for every route, or a route's own."""
    return fields.Integer(
        strict=True,
        validate=validate.Range(
            min=0,
            max=1_000_000,
            error="requests a route accepts a minute from one address, a whole number from "
            "{min} to {max} (0: no per-address quota)",
        ),
    )


class BridgeSchema(Schema):
    class Meta:
        unknown = RAISE

    max_body_bytes = fields.Integer(validate=validate.Range(min=1024, max=64 * 1024 * 1024))
    dedup_ttl_seconds = fields.Integer(validate=validate.Range(min=1))
    data_dir = fields.String()
    queue_name = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]+$"))
    admin_token = fields.String(allow_none=True)
    public_url = fields.Url(allow_none=True, require_tld=False, schemes={"http", "https"})
    max_requests_per_minute = route_quota()
    max_requests_per_minute_per_ip = address_quota()
    trusted_proxy_count = fields.Integer(
        strict=True,
        validate=validate.Range(
            min=0,
            max=10,
            error="the number of reverse proxies in front of the bridge that append to "
            "X-Forwarded-For, from {min} to {max} (0: trust no X-Forwarded-For)",
        ),
    )


class DeliverySchema(Schema):
    class Meta:
        unknown = RAISE

    max_attempts = fields.Integer(validate=validate.Range(min=1, max=100))
    retry_base_seconds = fields.Float(validate=validate.Range(min=0.01, max=3600))
    retry_max_seconds = fields.Float(validate=validate.Range(min=0.01, max=86400))
    job_timeout_seconds = fields.Integer(validate=validate.Range(min=5, max=3600))
    keep_delivered_days = fields.Float(validate=validate.Range(min=0.001))
    keep_failed_days = fields.Float(validate=validate.Range(min=0.001))
    alert_webhook_url = fields.Url(require_tld=False, allow_none=True)


def _kind(value: Any) -> str:
    """What a TOML value is, in the file's own words."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "a date or time"


class Credential(fields.Field):
    """A credential a sender presents: one string, or a list of strings while it is rotated
    (every entry is accepted). A list entry that is empty or not a string is named by its place
    (``secret[1]``), never by its value."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError(
                f"must be a string, or a list of strings while rotating it, not {_kind(value)}"
            )
        if not value:
            raise ValidationError(
                "must not be an empty list (one value, or the old and the new while rotating)"
            )
        problems = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                problems[f"[{index}]"] = [f"must be a string, not {_kind(item)}"]
            elif not item.strip():
                problems[f"[{index}]"] = ["must not be empty"]
        if problems:
            raise ValidationError(problems)
        return tuple(value)


class CampaignSchema(Schema):
    class Meta:
        unknown = RAISE

    mode = fields.String(required=True, validate=validate.OneOf(["per_lead", "window"]))
    flow_id = fields.String(validate=validate.Length(min=1))
    flow_name = fields.String(validate=validate.Length(min=1, max=200))
    every_minutes = fields.Integer(validate=validate.Range(min=1, max=24 * 60))
    per_lead_max_per_minute = fields.Integer(validate=validate.Range(min=1, max=1000))
    calling_hours = fields.String()
    days = fields.String()
    timezone = fields.String()
    calls_per_minute = fields.Integer(validate=validate.Range(min=1))
    max_concurrent_calls = fields.Integer(validate=validate.Range(min=1))
    max_retries = fields.Integer(validate=validate.Range(min=0))
    retry_delay_minutes = fields.Integer(validate=validate.Range(min=1))
    call_timeout_minutes = fields.Integer(validate=validate.Range(min=1))

    @validates_schema(skip_on_field_errors=False)
    def _checks(self, data, **kwargs):
        errors: dict[str, list[str]] = {}
        if bool(data.get("flow_id")) == bool(data.get("flow_name")):
            errors["flow_id"] = ["set flow_id or flow_name (see `oliai-bridge flows`), not both"]
        if data.get("days") and not data.get("calling_hours"):
            errors["days"] = ["days needs calling_hours"]
        try:
            if data.get("calling_hours"):
                CallingHours.parse(data["calling_hours"], data.get("days"))
        except ValueError as exc:
            key = "days" if str(exc).startswith("days") else "calling_hours"
            errors.setdefault(key, []).append(str(exc))
        try:
            if data.get("timezone"):
                zone(data["timezone"])
        except ValueError as exc:
            errors["timezone"] = [str(exc)]
        if errors:
            raise ValidationError(errors)


class RouteSchema(Schema):
    class Meta:
        unknown = INCLUDE  # source-specific options (e.g. organization_id) are passed through

    name = fields.String(
        required=True,
        validate=validate.Regexp(ROUTE_NAME, error="use letters, digits, _ . - (at most 64)"),
    )
    source = fields.String(required=True)
    audience_id = fields.String()
    audience_name = fields.String(validate=validate.Length(min=1, max=200))
    on_duplicate = fields.String(validate=validate.OneOf(["update", "skip"]))
    language = fields.String(validate=validate.Regexp(LANGUAGE, error="must look like hi-IN"))
    region = fields.String()
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.String(), load_default=dict
    )
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    api_base_url = fields.Url(require_tld=False)
    secret = Credential()
    token = Credential()
    basic_auth = Credential()
    verify_token = Credential()
    access_token = fields.String()
    api_key = fields.String()
    campaign = fields.Nested(CampaignSchema)
    max_requests_per_minute = route_quota()
    max_requests_per_minute_per_ip = address_quota()

    @validates_schema(skip_on_field_errors=False)
    def _checks(self, data, **kwargs):
        errors: dict[str, list[str]] = {}
        if data.get("audience_id") and data.get("audience_name"):
            errors.setdefault("audience_id", []).append(
                "set audience_id or audience_name, not both"
            )
        if not data.get("audience_id") and not data.get("audience_name"):
            errors.setdefault("audience_id", []).append(
                "set audience_id (an existing audience) or audience_name (created if missing)"
            )
        region = data.get("region")
        if region is not None and not valid_region(region):
            errors.setdefault("region", []).append(f"unknown region code {region!r}")
        basic = data.get("basic_auth")
        for index, value in enumerate((basic,) if isinstance(basic, str) else basic or ()):
            if ":" not in value:
                where = "basic_auth" if isinstance(basic, str) else f"basic_auth[{index}]"
                errors.setdefault(where, []).append('must be "user:password"')
        for key, expr in data.get("fields_", {}).items():
            if key not in CONTACT_FIELDS:
                known = ", ".join(sorted(set(CONTACT_FIELDS.values())))
                errors.setdefault("fields", []).append(f"unknown contact field {key!r} ({known})")
            _check_jmespath(expr, f"fields.{key}", errors)
        for key, expr in data.get("metadata", {}).items():
            _check_jmespath(expr, f"metadata.{key}", errors)
        if errors:
            raise ValidationError(errors)


def _check_jmespath(expr: str, where: str, errors: dict[str, list[str]]) -> None:
    try:
        jmespath.compile(expr)
    except JMESPathError as exc:
        message = str(exc).splitlines()[0]
        errors.setdefault(where, []).append(f"invalid JMESPath {expr!r}: {message}")


def valid_region(code: str) -> bool:
    return code.upper() in phonenumbers.SUPPORTED_REGIONS


# --- loading -------------------------------------------------------------------------------


def expand_env(value: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string below ``value``."""
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            if where not in OPTIONAL_ENV:
                problems.append(f"{where}: environment variable {name} is not set")
            return ""

        return ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: expand_env(v, env, f"{where}.{k}" if where else k, problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def load_settings(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Settings:
    """Read and validate the config; raise ``ConfigError`` listing every problem.

    ``path`` None means ``$BRIDGE_CONFIG``, else the TOML text in ``$BRIDGE_CONFIG_TOML`` (for
    platforms where the file system is the repository's), else ``./config.toml``; ``data``
    skips reading (tests, the built-in demo config of ``oliai-bridge dev``).
    """
    env = os.environ if env is None else env
    source_path = None
    if data is None and path is None and env.get("BRIDGE_CONFIG_TOML"):
        if env.get("BRIDGE_CONFIG"):
            raise ConfigError(
                ["set BRIDGE_CONFIG (a file) or BRIDGE_CONFIG_TOML (the text), not both"]
            )
        source_path = "$BRIDGE_CONFIG_TOML"
        try:
            data = tomllib.loads(env["BRIDGE_CONFIG_TOML"])
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"BRIDGE_CONFIG_TOML: not valid TOML: {exc}"]) from None
    elif data is None:
        source_path = str(path or env.get("BRIDGE_CONFIG") or defaults.CONFIG_PATH)
        try:
            with open(source_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                [f"{source_path}: no such file (set BRIDGE_CONFIG, or copy config.example.toml)"]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{source_path}: not valid TOML: {exc}"]) from None
    return build_settings(data, env=env, source_path=source_path)


def build_settings(
    data: Mapping[str, Any], *, env: Mapping[str, str], source_path: str | None = None
) -> Settings:
    problems: list[str] = []
    warnings: list[str] = []
    raw = _expanded(data, env, problems)
    oliai_vals = _load(OliAISchema(), _oliai_raw(raw, env), "oliai", problems)
    if "default_region" in oliai_vals:
        oliai_vals["default_region"] = oliai_vals["default_region"].upper()
    bridge_vals = _load(BridgeSchema(), raw.get("bridge") or {}, "bridge", problems)
    delivery_vals = _load(DeliverySchema(), raw.get("delivery") or {}, "delivery", problems)
    oliai = OliAISettings(**oliai_vals)
    routes = _routes(raw.get("routes") or [], oliai.default_region, problems, warnings)
    process = process_settings(env, problems)
    if problems:
        raise ConfigError(problems)
    settings = Settings(
        oliai=oliai,
        delivery=DeliverySettings(**delivery_vals),
        routes=routes,
        redis_url=env.get("REDIS_URL") or None,
        source_path=source_path,
        warnings=tuple(warnings),
        **process,
        **bridge_vals,
    )
    return replace(settings, warnings=settings.warnings + tuple(_settings_warnings(settings)))


def _expanded(data: Mapping[str, Any], env: Mapping[str, str], problems: list[str]) -> dict:
    """The config with ``${VAR}`` read from ``env``; unknown sections named."""
    known = {"oliai", "bridge", "delivery", "routes"}
    for key in data:
        if key not in known:
            problems.append(f"{key}: unknown section (expected one of {', '.join(sorted(known))})")
    raw = expand_env({k: v for k, v in data.items() if k != "routes"}, env, "", problems)
    routes_in = data.get("routes") or []
    if isinstance(routes_in, list):
        raw["routes"] = [
            expand_env(item, env, f"routes[{item.get('name') or i}]", problems)
            if isinstance(item, dict)
            else item
            for i, item in enumerate(routes_in)
        ]
    else:
        raw["routes"] = routes_in
    return raw


def _oliai_raw(raw: dict, env: Mapping[str, str]) -> dict:
    """``[oliai]`` with the environment's key and URL winning; settings that may stay empty
    (``OPTIONAL_ENV``) read as unset when their variable is."""
    oliai_raw = dict(raw.get("oliai") or {})
    for key, var in (("api_key", "OLIAI_API_KEY"), ("base_url", "OLIAI_BASE_URL")):
        if env.get(var):
            oliai_raw[key] = env[var]
    for path in OPTIONAL_ENV:
        section, key = path.split(".")
        table = oliai_raw if section == "oliai" else raw.get(section)
        if isinstance(table, dict) and table.get(key) == "":
            table[key] = None
    return oliai_raw


def _routes(
    routes_raw: Any, default_region: str, problems: list[str], warnings: list[str]
) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    if not isinstance(routes_raw, list):
        problems.append("routes: must be an array of tables ([[routes]])")
        return routes
    for index, item in enumerate(routes_raw):
        label = (
            f"routes[{item.get('name') or index}]" if isinstance(item, dict) else f"routes[{index}]"
        )
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a table")
            continue
        vals = _load(RouteSchema(), item, label, problems)
        if not vals:
            continue
        if vals["name"] in routes:
            problems.append(f"{label}.name: route {vals['name']!r} is defined twice")
            continue
        if vals["source"] not in source_names():
            problems.append(
                f"{label}.source: unknown source {vals['source']!r} "
                f"(known: {', '.join(source_names())})"
            )
            continue
        route = _route(vals, default_region)
        _check_route(route, label, problems, warnings)
        routes[route.name] = route
    return routes


def _check_route(route: Route, label: str, problems: list[str], warnings: list[str]) -> None:
    """What the route's source asks of it, and a credential for who may post."""
    source = get_source(route.source)
    for problem in source.check_route(route):
        problems.append(f"{label}.{problem}")
    if route.secret or route.token or route.basic_auth:
        return
    if source.signs:
        problems.append(
            f"{label}.secret: source {route.source!r} signs its requests: set secret "
            "(or token, if you cannot get the signing secret)"
        )
    else:
        warnings.append(f"{label}: no token set: anyone who knows the URL can post leads to it")


def _settings_warnings(settings: Settings) -> list[str]:
    """What is allowed but probably not meant."""
    out = []
    if settings.admin_token and len(settings.admin_token) < defaults.MIN_ADMIN_TOKEN_CHARS:
        out.append(
            f"bridge.admin_token: shorter than {defaults.MIN_ADMIN_TOKEN_CHARS} characters; use "
            "a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    routes = settings.routes.values()
    per_address = [settings.max_requests_per_minute_per_ip] + [
        r.max_requests_per_minute_per_ip for r in routes
    ]
    if any(per_address) and not settings.trusted_proxy_count:
        out.append(
            "bridge.max_requests_per_minute_per_ip: counted by the connection's address; behind "
            "a reverse proxy every request comes from the proxy's: set "
            "bridge.trusted_proxy_count to the number of proxies in front"
        )
    if not settings.oliai.api_key and any(not r.api_key for r in routes):
        out.append("oliai.api_key: not set (OLIAI_API_KEY): deliveries will fail with 401")
    return out


def process_settings(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """What the platform sets for the process: ``PORT``, ``WEB_CONCURRENCY``, ``LOG_LEVEL``,
    ``LOG_FORMAT`` and the TLS options of a ``rediss://`` ``REDIS_URL``."""
    out: dict[str, Any] = {"log_level": log_level(env), "log_format": log_format(env)}
    for key, var, top in (("port", "PORT", 65535), ("web_concurrency", "WEB_CONCURRENCY", 256)):
        value = env.get(var)
        if not value:
            continue
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not 1 <= number <= top:
            problems.append(f"{var}: must be a whole number from 1 to {top}, not {value!r}")
        else:
            out[key] = number
    given = env.get("LOG_FORMAT")
    if given and given.lower() not in FORMATS:
        problems.append(f"LOG_FORMAT: must be json or text, not {given[:20]!r}")
    url = env.get("REDIS_URL") or ""
    if url and not url.startswith(REDIS_SCHEMES):
        problems.append(
            "REDIS_URL: must start with redis://, rediss:// (TLS) or unix:// "
            f"(not {url.partition(':')[0][:20]!r})"
        )
    reqs = (env.get("REDIS_SSL_CERT_REQS") or "").strip().lower()
    if reqs:
        if reqs not in SSL_CERT_REQS:
            problems.append(
                f"REDIS_SSL_CERT_REQS: must be one of {', '.join(SSL_CERT_REQS)}, not {reqs[:20]!r}"
            )
        else:
            out["redis_ssl_cert_reqs"] = reqs
    ca_certs = env.get("REDIS_SSL_CA_CERTS")
    if ca_certs:
        if not Path(ca_certs).is_file():
            problems.append(f"REDIS_SSL_CA_CERTS: no such file {ca_certs!r}")
        else:
            out["redis_ssl_ca_certs"] = ca_certs
    return out


def log_level(env: Mapping[str, str] | None = None) -> str:
    """``LOG_LEVEL`` (before any config is read, logging is set up with it)."""
    env = os.environ if env is None else env
    level = (env.get("LOG_LEVEL") or defaults.LOG_LEVEL).upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def log_format(env: Mapping[str, str] | None = None, default: str = defaults.LOG_FORMAT) -> str:
    """``LOG_FORMAT``: ``json`` or ``text`` (``default`` when unset or unknown)."""
    env = os.environ if env is None else env
    fmt = (env.get("LOG_FORMAT") or default).lower()
    return fmt if fmt in FORMATS else default


def _route(vals: dict[str, Any], default_region: str) -> Route:
    known = set(RouteSchema().fields) | {"fields"}
    options = {k: v for k, v in vals.items() if k not in known}
    mapped = {CONTACT_FIELDS[k]: v for k, v in vals.pop("fields_", {}).items()}
    return Route(
        name=vals["name"],
        source=vals["source"],
        audience_id=vals.get("audience_id"),
        audience_name=vals.get("audience_name"),
        on_duplicate=vals.get("on_duplicate", "update"),
        language=vals.get("language"),
        region=(vals.get("region") or default_region).upper(),
        fields=mapped,
        metadata=dict(vals.get("metadata") or {}),
        options=options,
        api_base_url=vals.get("api_base_url"),
        secret=vals.get("secret"),
        token=vals.get("token"),
        basic_auth=vals.get("basic_auth"),
        verify_token=vals.get("verify_token"),
        access_token=vals.get("access_token"),
        api_key=vals.get("api_key"),
        campaign=CampaignSettings(**vals["campaign"]) if vals.get("campaign") else None,
        max_requests_per_minute=vals.get("max_requests_per_minute"),
        max_requests_per_minute_per_ip=vals.get("max_requests_per_minute_per_ip"),
    )


def _load(schema: Schema, data: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        problems.append(f"{where}: must be a table")
        return {}
    try:
        return schema.load(dict(data))
    except ValidationError as exc:
        for line in _flatten_errors(exc.messages, where):
            problems.append(line)
        return {}


def _flatten_errors(messages: Any, where: str) -> list[str]:
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            key = "fields" if key == "fields_" else key
            if key == "_schema":
                sub = where
            elif str(key).startswith("["):
                sub = f"{where}{key}"  # a list entry: secret[1]
            else:
                sub = f"{where}.{key}"
            out.extend(_flatten_errors(value, sub))
    elif isinstance(messages, list):
        for value in messages:
            out.extend(_flatten_errors(value, where))
    else:
        text = str(messages)
        if text == "Unknown field.":
            text = "unknown key"
        out.append(f"{where}: {text}")
    return out


#: The built-in config ``oliai-bridge dev`` writes (and ``try``/``failed``/``replay`` read)
#: when no config file exists.
DEMO_CONFIG = """\
# Written by `oliai-bridge dev` because no config.toml was found. Copy config.example.toml to
# config.toml to configure your own routes.
[oliai]
default_region = "IN"

[[routes]]
name = "demo"
source = "generic"
audience_name = "Bridge demo leads"
on_duplicate = "update"
"""


def demo_settings_data() -> dict[str, Any]:
    return tomllib.loads(DEMO_CONFIG)


def config_exists(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("BRIDGE_CONFIG_TOML") and not env.get("BRIDGE_CONFIG"):
        return True
    return Path(env.get("BRIDGE_CONFIG") or defaults.CONFIG_PATH).is_file()
