"""A captured request sent again: every signed source answers it as a duplicate (one delivery,
never two), and refuses a request whose signed timestamp lies outside the tolerance in either
direction — a capture replayed late, or one dated ahead to outlive the window.

Each request is the source's own valid one (its builder in ``tests/sources``), posted through
the Flask app over real Redis.
"""

from __future__ import annotations

import time

import pytest

from bridge.keys import RECEIVED_STREAM
from tests.bridge_fixtures import waiting_leads
from tests.security.signed_sources import SIGNED_SOURCES, TIMESTAMPED, by_name
from tests.sources import harness, test_shopify, test_standard_webhooks


def delivery_ids(answer) -> list[str]:
    body = answer.get_json()
    return [d["deliveryId"] for d in body.get("deliveries") or [body]]


def recorded(client) -> tuple[int, int]:
    """(deliveries recorded, leads waiting for a worker): no worker runs in these tests."""
    waiting = waiting_leads(client.redis, client.settings.queue_name)
    return client.redis.xlen(RECEIVED_STREAM), waiting


@pytest.mark.parametrize("source", **by_name(SIGNED_SOURCES))
def test_a_captured_request_sent_again_is_a_duplicate(make_client, source):
    client = make_client(routes=[source.route])
    captured = source.signed()

    first = harness.post(client, captured)
    assert first.status_code == source.accepted, first.get_json()
    assert first.get_json()["status"] == "queued"
    deliveries, jobs = recorded(client)
    assert deliveries == jobs == len(delivery_ids(first))

    again = harness.post(client, captured)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["duplicate"] is True
    assert delivery_ids(again) == delivery_ids(first)
    assert recorded(client) == (deliveries, jobs)


@pytest.mark.parametrize("source", **by_name(TIMESTAMPED))
def test_a_request_dated_in_the_future_is_refused(make_client, source):
    client = make_client(routes=[source.route])
    ahead = source.signed(at=time.time() + source.tolerance + 60)

    answer = harness.post(client, ahead)
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "unauthorized"
    assert answer.get_json()["message"].startswith("timestamp in the future")
    assert recorded(client) == (0, 0)


@pytest.mark.parametrize("source", **by_name(TIMESTAMPED))
def test_a_captured_request_sent_after_the_tolerance_is_refused(make_client, source):
    client = make_client(routes=[source.route])
    late = source.signed(at=time.time() - source.tolerance - 60)

    answer = harness.post(client, late)
    assert answer.status_code == 401
    assert "s old" in answer.get_json()["message"]
    assert recorded(client) == (0, 0)


@pytest.mark.parametrize("source", **by_name(TIMESTAMPED))
def test_clock_skew_inside_the_tolerance_is_accepted_both_ways(make_client, source):
    client = make_client(routes=[source.route])
    ahead = harness.post(client, source.signed(at=time.time() + source.tolerance - 30))
    assert ahead.status_code == source.accepted, ahead.get_json()
    # The same event again, dated behind: accepted as the duplicate it is, not refused.
    behind = harness.post(client, source.signed(at=time.time() - source.tolerance + 30))
    assert behind.status_code == 200, behind.get_json()
    assert behind.get_json()["duplicate"] is True


def test_shopify_captured_request_under_a_new_webhook_id_is_a_duplicate(make_client):
    # X-Shopify-Webhook-Id is the event id but is not signed: changing it must not make a
    # captured request a new delivery.
    client = make_client(routes=[test_shopify.ROUTE_DATA])
    captured = test_shopify.signed()
    first = harness.post(client, captured)
    assert first.status_code == 202
    renamed = harness.with_headers(captured.headers, x_shopify_webhook_id="forged-id-0001")
    again = harness.post(client, harness.request(captured.body, renamed))
    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    assert delivery_ids(again) == delivery_ids(first)
    assert recorded(client) == (1, 1)
    # A new customer is still a new delivery.
    other = test_shopify.signed({**test_shopify.CUSTOMER, "id": 1}, x_shopify_webhook_id="w-2")
    assert harness.post(client, other).status_code == 202
    assert recorded(client) == (2, 2)


def test_standard_webhooks_captured_request_under_a_new_message_id_is_refused(make_client):
    # webhook-id is signed: a changed id breaks the signature.
    client = make_client(routes=[test_standard_webhooks.ROUTE_DATA])
    captured = test_standard_webhooks.signed()
    assert harness.post(client, captured).status_code == 202
    renamed = harness.with_headers(captured.headers, webhook_id="msg_forged")
    assert harness.post(client, harness.request(captured.body, renamed)).status_code == 401
    assert recorded(client) == (1, 1)
