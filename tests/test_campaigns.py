"""Speed to lead: finding the voice flow (``oliai-bridge flows``, ``check-config``) and the
campaign steps, against the sandbox over HTTP."""

import json
import os
import subprocess
import sys

import pytest

from tests.bridge_fixtures import REPO_ROOT, route_dict, write_config


@pytest.fixture
def bridge_cmd(tmp_path, redis_server, sandbox):
    def run(config: dict, *args: str, api_key: str | None = None):
        path = write_config(tmp_path / "config.toml", config)
        env = {
            **os.environ,
            "BRIDGE_CONFIG": str(path),
            "REDIS_URL": redis_server.url,
            "OLIAI_BASE_URL": sandbox.base_url,
            "OLIAI_API_KEY": api_key or sandbox.keys[0],
        }
        return subprocess.run(
            [sys.executable, "-m", "bridge", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def campaign_route(**campaign):
    return route_dict(campaign={"mode": "per_lead", **campaign})


def test_flows_lists_the_voice_flows_of_the_key(bridge_cmd, sandbox):
    flows = sandbox.org_state()["flows"]
    r = bridge_cmd({"routes": [route_dict()]}, "flows")
    assert r.returncode == 0, r.stderr
    for flow in flows:
        assert flow["id"] in r.stdout and flow["name"] in r.stdout
    assert sandbox.keys[0] not in r.stdout + r.stderr
    listed = json.loads(bridge_cmd({"routes": [route_dict()]}, "flows", "--json").stdout)
    assert {f["id"] for f in listed[0]["flows"]} == {f["id"] for f in flows}
    assert listed[0]["routes"] == ["leads"]


def test_check_config_verifies_the_campaign_flow_with_the_key(bridge_cmd, sandbox):
    flow = sandbox.org_state()["flows"][0]
    ok = bridge_cmd({"routes": [campaign_route(flow_id=flow["id"])]}, "check-config")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    by_name = bridge_cmd({"routes": [campaign_route(flow_name=flow["name"])]}, "check-config")
    assert by_name.returncode == 0, by_name.stdout

    missing = bridge_cmd({"routes": [campaign_route(flow_id="flow_nope")]}, "check-config")
    assert missing.returncode == 1
    assert "routes[leads].campaign.flow_id: no voice flow 'flow_nope'" in missing.stdout
    typo = bridge_cmd({"routes": [campaign_route(flow_name="Hindi Survey")]}, "check-config")
    assert "campaign.flow_name: no voice flow named 'Hindi Survey'" in typo.stdout


def test_check_config_says_when_the_flow_could_not_be_checked(bridge_cmd, sandbox):
    config = {"routes": [campaign_route(flow_id="flow_x")]}
    r = bridge_cmd(config, "check-config", api_key="sk_live_" + "0" * 32)
    assert r.returncode == 0, r.stdout  # a revoked key is not a config problem...
    assert "flow not checked" in r.stdout  # ...but it is said


def test_campaign_settings_problems_are_named(bridge_cmd):
    config = {"routes": [campaign_route(flow_id="f", calling_hours="9 to 5", days="Mon")]}
    r = bridge_cmd(config, "check-config")
    assert r.returncode == 1
    assert "routes[leads].campaign.calling_hours: calling_hours '9 to 5'" in r.stdout
    both = bridge_cmd({"routes": [campaign_route(flow_id="f", flow_name="n")]}, "check-config")
    assert "campaign.flow_id: set flow_id or flow_name" in both.stdout
