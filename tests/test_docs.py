"""docs/configuration.md cannot drift from the code: every key the schemas accept and every
environment variable the bridge reads is described there, and nothing else is."""

import re

from bridge.config import (
    ENVIRONMENT,
    BridgeSchema,
    CampaignSchema,
    DeliverySchema,
    OliAISchema,
    RouteSchema,
)
from tests.bridge_fixtures import REPO_ROOT

SCHEMAS = {"oliai": OliAISchema, "bridge": BridgeSchema, "delivery": DeliverySchema}
#: Rows of the reference: "| `oliai.base_url` | ..." and "| `REDIS_URL` | ...".
ROW = re.compile(r"^\| `([A-Za-z_.]+)` \|", re.MULTILINE)


def documented() -> set[str]:
    return set(ROW.findall((REPO_ROOT / "docs" / "configuration.md").read_text()))


def accepted() -> set[str]:
    keys = {
        f"{section}.{field.data_key or name}"
        for section, schema in SCHEMAS.items()
        for name, field in schema().fields.items()
    }
    keys |= {f"routes.{field.data_key or name}" for name, field in RouteSchema().fields.items()}
    keys |= {f"routes.campaign.{name}" for name in CampaignSchema().fields}
    return keys | set(ENVIRONMENT)


def test_every_config_key_and_variable_is_in_the_reference():
    missing = accepted() - documented()
    assert not missing, f"describe these in docs/configuration.md: {sorted(missing)}"


def test_the_reference_describes_nothing_the_code_does_not_read():
    stale = documented() - accepted()
    assert not stale, f"docs/configuration.md describes keys that do not exist: {sorted(stale)}"


def test_the_readme_links_the_guides_and_keeps_its_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    for guide in ("quickstart", "configuration", "deploying", "operating"):
        assert f"docs/{guide}.md" in readme
        assert (REPO_ROOT / "docs" / f"{guide}.md").is_file()
    assert "scripts/dev " in readme and "scripts/test " in readme
