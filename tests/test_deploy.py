"""The files a Heroku-style platform reads agree with the code: app.json describes every
variable the bridge reads, and the pins cover exactly what pyproject.toml asks for."""

import json
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bridge.config import ENVIRONMENT
from tests.bridge_fixtures import REPO_ROOT

#: Set by the platform for each process, never by the operator.
PLATFORM_SET = {"PORT"}


def pins(name: str) -> dict[str, str]:
    """{package: version} of a lock file, checking that every pin carries hashes."""
    text = (REPO_ROOT / name).read_text()
    found = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split(" ", 1)[0]
        if "==" not in head:
            continue
        assert "--hash=sha256:" in block, f"{name}: {head} has no hash"
        package, version = head.split("==")
        found[canonicalize_name(package)] = version
    return found


def test_app_json_describes_every_variable_and_one_web_and_one_worker():
    app = json.loads((REPO_ROOT / "app.json").read_text())
    assert set(app["env"]) == set(ENVIRONMENT) - PLATFORM_SET
    for name, entry in app["env"].items():
        assert len(entry["description"]) > 20, name
    assert app["formation"]["web"]["quantity"] == 1
    assert app["formation"]["worker"]["quantity"] == 1
    assert any(a["plan"].startswith("heroku-redis") for a in app["addons"])
    assert app["env"]["REDIS_SSL_CERT_REQS"]["value"] == "none"  # Heroku Redis is self-signed


def test_the_locks_pin_what_pyproject_asks_for_with_hashes():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    for req in wanted:
        version = runtime.get(canonicalize_name(req.name))
        assert version, f"{req.name} is not pinned in requirements.txt: run scripts/lock"
        assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"
    for req in map(Requirement, project["project"]["optional-dependencies"]["dev"]):
        version = dev.get(canonicalize_name(req.name))
        assert version and req.specifier.contains(version), f"{req}: run scripts/lock"
    # the tests run on exactly the versions that deploy
    assert {k: v for k, v in dev.items() if k in runtime} == runtime
