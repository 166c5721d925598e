"""The repository deploys as a Heroku-style Python buildpack builds it: a fresh virtualenv from
exactly the pinned ``requirements.txt``, then ``bin/post_compile`` (the project itself), then
the ``Procfile``'s release phase and its web and worker processes (under honcho), with the
config in the environment, delivering a lead to the sandbox."""

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bridge.storage import free_port
from tests.bridge_fixtures import REPO_ROOT

pytestmark = pytest.mark.e2e

CONFIG = """
[oliai]
rate_window_seconds = 2
general_per_minute = 1000

[[routes]]
name = "website"
source = "generic"
token = "${WEBSITE_TOKEN}"
audience_name = "Website leads"
"""
#: What a buildpack leaves out of the slug, or what this checkout made locally.
NOT_DEPLOYED = (
    ".git",
    ".venv*",
    "__pycache__",
    "*.egg-info",
    "build",
    ".*_cache",
    ".bridge-data",
    ".hypothesis",
)


def procfile() -> dict[str, str]:
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_the_procfile_names_the_release_web_and_worker_commands():
    assert procfile() == {
        "release": "oliai-bridge check-config",
        "web": "oliai-bridge web",
        "worker": "oliai-bridge worker",
    }
    pinned = (REPO_ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", pinned)
    assert platform.python_version().startswith(pinned + ".")  # we test what deploys


@pytest.fixture(scope="module")
def slug(tmp_path_factory) -> Path:
    """The app as built: its files, and a virtualenv with the pins and the project."""
    app = tmp_path_factory.mktemp("slug") / "app"
    shutil.copytree(REPO_ROOT, app, ignore=shutil.ignore_patterns(*NOT_DEPLOYED))
    venv = app / ".heroku-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    build = [
        # what the buildpack runs, then its post_compile hook
        ["python", "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
        ["bin/post_compile"],
    ]
    for step in build:
        done = subprocess.run(step, cwd=app, env=env, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
    return app


def test_release_then_web_and_worker_deliver_a_lead(slug, redis_server, redis, sandbox, tmp_path):
    venv_bin = slug / ".heroku-python" / "bin"
    assert (venv_bin / "oliai-bridge").is_file()
    port = free_port()
    env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",  # nothing of the test's virtualenv
        "HOME": str(tmp_path),
        "REDIS_URL": redis_server.url,
        "OLIAI_API_KEY": sandbox.keys[0],
        "OLIAI_BASE_URL": sandbox.base_url,
        "BRIDGE_CONFIG_TOML": CONFIG,
        "WEBSITE_TOKEN": "website-token-6d1e",
        "WEB_CONCURRENCY": "1",
    }
    honcho = [sys.executable, "-m", "honcho", "--app-root", str(slug), "--no-prefix"]

    release = subprocess.run(
        [*honcho, "start", "release"], cwd=slug, env=env, capture_output=True, text=True
    )
    assert release.returncode == 0, release.stdout + release.stderr
    assert "OK: $BRIDGE_CONFIG_TOML: 1 route(s): website (generic)" in release.stdout

    broken = subprocess.run(
        [*honcho, "start", "release"],
        cwd=slug,
        env={**env, "BRIDGE_CONFIG_TOML": CONFIG.replace('"generic"', '"nosuch"')},
        capture_output=True,
        text=True,
    )
    assert broken.returncode != 0  # a bad config stops the release before any process starts
    assert "unknown source 'nosuch'" in broken.stdout

    log = open(tmp_path / "honcho.log", "w")  # noqa: SIM115 - closed below
    running = subprocess.Popen(
        [*honcho, "start", "--port", str(port), "web", "worker"],
        cwd=slug,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/hooks/website"
        deadline = time.monotonic() + 30
        while True:
            assert running.poll() is None, (tmp_path / "honcho.log").read_text()
            try:
                r = requests.post(
                    url,
                    json={"name": "Asha Rao", "phone": "098765 43210"},
                    headers={"X-Bridge-Token": "website-token-6d1e"},
                    timeout=2,
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "honcho.log").read_text()
                time.sleep(0.2)
        assert r.status_code == 202, r.text
        status = f"http://127.0.0.1:{port}/deliveries/{r.json()['deliveryId']}"
        while requests.get(status, timeout=2).json()["status"] != "delivered":
            assert time.monotonic() < deadline + 30, (tmp_path / "honcho.log").read_text()
            time.sleep(0.1)
        [contact] = sandbox.org_state()["contacts"]
        assert (contact["name"], contact["phoneNumber"]) == ("Asha Rao", "+919876543210")
    finally:
        os.killpg(running.pid, signal.SIGTERM)
        try:
            running.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait()
        log.close()
    text = (tmp_path / "honcho.log").read_text()
    assert "website-token-6d1e" not in text and sandbox.keys[0] not in text
    assert "Monkey-patching ssl" not in text  # the console script patches before ssl is imported
