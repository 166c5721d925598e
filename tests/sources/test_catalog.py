"""The source catalogue: an adapter is found by its module alone, and every source has its docs
page and its test module (which gives the property tests its samples)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

import bridge.sources
from bridge.config import build_settings
from bridge.exceptions import ConfigError
from bridge.sources import get_source, source_names

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "sources"
TESTS = REPO / "tests" / "sources"


@pytest.mark.parametrize("name", source_names())
def test_every_source_has_its_docs_page(name):
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"docs/sources/{name}.md is missing"
    title = page.read_text().splitlines()[0]
    assert f'`source = "{name}"`' in title, title


@pytest.mark.parametrize("name", source_names())
def test_every_source_has_its_test_module_with_samples(name):
    assert (TESTS / f"test_{name}.py").is_file(), f"tests/sources/test_{name}.py is missing"
    module = importlib.import_module(f"tests.sources.test_{name}")
    tests = [n for n in vars(module) if n.startswith("test_") and callable(getattr(module, n))]
    # built like the others (a valid request, one broken thing per test): not an empty stub
    assert len(tests) >= 5, f"tests/sources/test_{name}.py has {len(tests)} tests"
    samples = getattr(module, "PROPERTY_SAMPLES", None)
    assert samples, f"tests/sources/test_{name}.py defines no PROPERTY_SAMPLES"
    for sample in samples:
        json.dumps(sample)


def test_no_docs_page_or_test_module_without_its_source():
    names = set(source_names())
    assert {p.stem for p in DOCS.glob("*.md")} - names == set()
    own = {Path(__file__).stem.removeprefix("test_")}
    assert {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")} - names - own == set()


def test_each_source_is_named_by_its_module():
    names = source_names()
    assert names[0] == "generic"  # listed first where the known sources are named
    assert "base" not in names
    for name in names:
        assert get_source(name).name == name


@pytest.mark.parametrize("name", source_names())
def test_a_source_says_whether_it_reads_the_url(name):
    # The web side works the URL out only for sources that say they read it (``reads_url``):
    # one that read ``req.url`` without saying so would check its signature against "".
    module = importlib.import_module(f"bridge.sources.{name}")
    reads = "req.url" in Path(module.__file__).read_text()
    assert get_source(name).reads_url == reads, f"{name}: reads_url should be {reads}"


@pytest.fixture
def extra_modules(tmp_path, monkeypatch):
    """A folder whose modules count as part of ``bridge.sources`` for the test."""
    monkeypatch.setattr(bridge.sources, "__path__", [*bridge.sources.__path__, str(tmp_path)])
    source_names.cache_clear()
    get_source.cache_clear()
    yield tmp_path
    for path in tmp_path.glob("*.py"):
        sys.modules.pop(f"bridge.sources.{path.stem}", None)
    monkeypatch.undo()
    source_names.cache_clear()
    get_source.cache_clear()


def test_a_new_module_is_a_source_without_being_listed_anywhere(extra_modules, make_client):
    (extra_modules / "acme_forms.py").write_text(
        '"""Acme Forms: posts flat JSON."""\n'
        "from bridge.sources.base import Source\n\n\n"
        "class AcmeForms(Source):\n"
        '    name = "acme_forms"\n\n\n'
        "SOURCE = AcmeForms()\n"
    )
    (extra_modules / "acme_helpers.py").write_text('"""Helpers, no adapter."""\nVALUE = 1\n')
    assert "acme_forms" in source_names()
    assert "acme_helpers" not in source_names()
    route = {"name": "acme", "source": "acme_forms", "audience_name": "Acme", "token": "t0ken-acme"}
    client = make_client(routes=[route])
    r = client.post(
        "/hooks/acme",
        json={"name": "Asha", "phone": "+919876543210"},
        headers={"X-Bridge-Token": "t0ken-acme"},
    )
    assert r.status_code == 202, r.json
    assert client.store.get(r.json["deliveryId"]).source == "acme_forms"


def test_a_module_without_source_is_not_a_source(extra_modules):
    (extra_modules / "acme_helpers.py").write_text("VALUE = 1\n")
    with pytest.raises(ConfigError) as refused:
        build_settings(
            {"routes": [{"name": "r", "source": "acme_helpers", "audience_name": "A"}]}, env={}
        )
    assert any("unknown source 'acme_helpers'" in p for p in refused.value.problems)
    with pytest.raises(KeyError):
        get_source("acme_helpers")
