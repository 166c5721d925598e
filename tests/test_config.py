"""Config: TOML + environment → validated settings; every problem named by route and key."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bridge.config import build_settings, config_exists, load_settings
from bridge.exceptions import ConfigError

ROUTE = {"name": "r", "source": "generic", "audience_name": "A"}


def problems(data, env=None):
    with pytest.raises(ConfigError) as err:
        build_settings(data, env=env or {})
    return err.value.problems


def test_env_references_are_expanded_and_secrets_stay_out_of_repr():
    s = build_settings(
        {"oliai": {"api_key": "${KEY}"}, "routes": [{**ROUTE, "token": "${TOK:-fallback}"}]},
        env={"KEY": "sk_live_secret_value"},
    )
    assert s.oliai.api_key == "sk_live_secret_value"
    assert s.routes["r"].token == "fallback"
    assert "sk_live_secret_value" not in repr(s)
    assert "fallback" not in repr(s.routes["r"])


def test_environment_wins_over_the_file_for_key_url_and_redis():
    s = build_settings(
        {
            "oliai": {"api_key": "from-file", "base_url": "https://api.oliai.in/v1"},
            "routes": [ROUTE],
        },
        env={
            "OLIAI_API_KEY": "from-env",
            "OLIAI_BASE_URL": "http://127.0.0.1:9/v1",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert s.oliai.api_key == "from-env"
    assert s.oliai.base_url == "http://127.0.0.1:9/v1"
    assert s.redis_url == "redis://127.0.0.1:1/0"


def test_unset_api_key_is_a_warning_not_an_error():
    s = build_settings({"oliai": {"api_key": "${OLIAI_API_KEY}"}, "routes": [ROUTE]}, env={})
    assert s.oliai.api_key is None
    assert any("api_key" in w for w in s.warnings)


def test_every_problem_is_reported_with_its_place():
    found = problems(
        {
            "oliai": {"default_region": "XX"},
            "colour": "blue",
            "routes": [
                {"name": "a", "source": "nope", "audience_id": "x"},
                {"name": "b", "source": "generic"},
                {
                    "name": "c",
                    "source": "generic",
                    "audience_id": "x",
                    "on_duplicate": "merge",
                    "fields": {"phone": "fields.[", "shoe_size": "fields.s"},
                },
                {"name": "d", "source": "generic", "audience_id": "x", "secret": "${MISSING}"},
                {"name": "d", "source": "generic", "audience_id": "y"},
            ],
        }
    )
    text = "\n".join(found)
    assert "colour: unknown section" in text
    assert "oliai.default_region: unknown region code 'XX'" in text
    assert "routes[a].source: unknown source 'nope'" in text
    assert "routes[b].audience_id: set audience_id" in text
    assert "routes[c].on_duplicate" in text
    assert "routes[c].fields.phone: invalid JMESPath 'fields.['" in text
    assert "routes[c].fields: unknown contact field 'shoe_size'" in text
    assert "routes[d].secret: environment variable MISSING is not set" in text
    assert "routes[d].name: route 'd' is defined twice" in text


def test_route_region_defaults_to_the_oliai_default_region():
    s = build_settings({"oliai": {"default_region": "us"}, "routes": [ROUTE]}, env={})
    assert s.routes["r"].region == "US"


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[oliai\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_check_config_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(
        '[[routes]]\nname = "r"\nsource = "generic"\naudience_name = "A"\ntoken = "${T}"\n'
    )
    run = [sys.executable, "-m", "bridge", "--config", str(good), "check-config"]
    ok = subprocess.run(run, capture_output=True, text=True, env={"T": "x", "PATH": ""})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: ") and "r (generic)" in ok.stdout
    bad = subprocess.run(run, capture_output=True, text=True, env={"PATH": ""})
    assert bad.returncode == 1
    assert "routes[r].token: environment variable T is not set" in bad.stdout


def test_example_config_is_valid():
    s = load_settings(
        "config.example.toml", env={"WEBSITE_FORM_TOKEN": "t", "TYPEFORM_SECRET": "s"}
    )
    assert set(s.routes) == {"website-form", "typeform-leads"}


def test_the_example_config_shows_the_defaults_it_writes_out():
    # A number in the example that is not the default misleads whoever copies it: the same
    # settings must come out with the example's [oliai], [bridge] and [delivery] values left out.
    env = {"WEBSITE_FORM_TOKEN": "t", "TYPEFORM_SECRET": "s", "OLIAI_API_KEY": "k"}
    data = tomllib.loads(Path("config.example.toml").read_text())
    stripped = {
        **data,
        **{
            section: {k: v for k, v in data[section].items() if "${" in str(v)}
            for section in ("oliai", "bridge", "delivery")
        },
    }
    assert stripped["delivery"] == {} != data["delivery"]  # there were values to compare
    assert build_settings(data, env=env) == build_settings(stripped, env=env)


def test_the_config_may_come_as_text_in_the_environment(tmp_path):
    text = '[[routes]]\nname = "web"\nsource = "generic"\naudience_id = "aud_1"\n'
    settings = load_settings(env={"BRIDGE_CONFIG_TOML": text})
    assert list(settings.routes) == ["web"]
    assert settings.source_path == "$BRIDGE_CONFIG_TOML"
    assert config_exists({"BRIDGE_CONFIG_TOML": text})
    file = tmp_path / "c.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"BRIDGE_CONFIG_TOML": text, "BRIDGE_CONFIG": str(file)})
    assert exc.value.problems == [
        "set BRIDGE_CONFIG (a file) or BRIDGE_CONFIG_TOML (the text), not both"
    ]
    assert list(load_settings(file, env={"BRIDGE_CONFIG_TOML": "not toml ["}).routes) == ["web"]
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"BRIDGE_CONFIG_TOML": "[[routes]\n"})
    assert exc.value.problems[0].startswith("BRIDGE_CONFIG_TOML: not valid TOML")


def test_a_short_admin_token_is_warned_about():
    routes = [{"name": "leads", "source": "generic", "audience_name": "Leads"}]
    short = build_settings({"bridge": {"admin_token": "letmein"}, "routes": routes}, env={})
    assert any(w.startswith("bridge.admin_token: shorter than 32") for w in short.warnings)
    strong = build_settings({"bridge": {"admin_token": "k" * 43}, "routes": routes}, env={})
    assert not any("admin_token" in w for w in strong.warnings)
