"""The shared count of wrong admin tokens per client address (the page's behaviour over HTTP is
in ``tests/test_admin_page.py``)."""

from bridge import defaults
from bridge.sign_ins import SignInLimit, waiting_message


def test_an_ipv6_host_is_counted_by_its_64_as_the_quotas_count_it(redis):
    limit = SignInLimit(redis)
    for i in range(defaults.ADMIN_SIGN_IN_FAILURES):
        limit.failed(f"2001:db8:1:2::{i + 1:x}")  # a host picking a new address per guess
    assert limit.retry_after("2001:db8:1:2:ffff::9") is not None
    assert limit.retry_after("2001:db8:1:3::1") is None  # the next /64 is someone else
    assert limit.retry_after("::ffff:192.0.2.1") is None


def test_the_wait_is_said_in_words_a_person_reads():
    assert waiting_message(300).startswith("Too many wrong admin tokens from your address:")
    assert "try again in 5 minutes." in waiting_message(300)
    assert "try again in 2 minutes." in waiting_message(61)
    assert "try again in 45 s." in waiting_message(45)
