"""Screenshots of the admin page for docs/admin.md: ``python -m tests.browser.screenshots``.

Runs ``oliai-bridge dev`` (embedded Redis, the OliAI sandbox, web, worker) in a temporary folder
with three routes, sends it some leads (a few of which fail or are skipped), signs in through the
form in headless Chromium and saves docs/img/admin-{overview,deliveries,delivery,failed}.png.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bridge.storage import free_port
from tests.browser.conftest import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img"
TOKEN = "docs-admin-token-0123456789"
CONFIG = f"""
[oliai]
default_region = "IN"

[bridge]
admin_token = "{TOKEN}"

[delivery]
max_attempts = 1

[[routes]]
name = "website-form"
source = "generic"
token = "form-token-123456"
audience_name = "Website leads"

[[routes]]
name = "zapier-crm"
source = "zapier"
token = "zap-token-123456"
audience_name = "CRM leads"

[[routes]]
name = "indiamart"
source = "indiamart"
token = "im-token-123456"
audience_name = "IndiaMART enquiries"
"""

LEADS = [
    ("website-form", {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}),
    ("website-form", {"name": "Arjun Mehta", "phone": "+91 98200 11223", "city": "Pune"}),
    ("zapier-crm", {"first_name": "Kavya", "last_name": "Iyer", "phone": "9123456780"}),
    ("website-form", {"name": "Rahul Verma", "phone": "98111 22334", "city": "Delhi"}),
    ("zapier-crm", {"first_name": "Sneha", "last_name": "Rao", "phone": "+919988776655"}),
]
FAILING = [
    ("website-form", {"name": "Ananya Gupta", "phone": "97654 32109", "city": "Jaipur"}),
    ("zapier-crm", {"first_name": "Vikram", "last_name": "Singh", "phone": "9000012345"}),
]
SKIPPED = {
    "CODE": 200,
    "STATUS": "SUCCESS",
    "RESPONSE": {
        "UNIQUE_QUERY_ID": "2874113902",
        "SENDER_NAME": "Deepak Traders",
        "SENDER_MOBILE": "12345",
        "QUERY_PRODUCT_NAME": "Industrial fans",
    },
}
TOKENS = {"website-form": "form-token-123456", "zapier-crm": "zap-token-123456"}


def start_dev(folder: Path) -> tuple[subprocess.Popen, str, str]:
    """``oliai-bridge dev`` in ``folder``; its web URL and its sandbox's root URL."""
    config = folder / "config.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("OLIAI_API_KEY", "REDIS_URL")}
    env.update(BRIDGE_CONFIG=str(config), LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "dev", "--port", str(port)]
        + ["--sandbox-port", str(free_port()), "--data-dir", str(folder / "data")],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sandbox = None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        match = re.search(r"OliAI sandbox: (http://\S+)/v1", line)
        if match:
            sandbox = match.group(1)
        if "oliai-bridge is running" in line:
            break
        if time.monotonic() > deadline:
            break
    if sandbox is None or proc.poll() is not None:
        proc.kill()
        raise SystemExit("oliai-bridge dev did not start")
    # Keep reading its output (access logs), or a full pipe would stop it.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, f"http://127.0.0.1:{port}", sandbox


def post(base: str, route: str, body: dict) -> str:
    if route == "indiamart":
        r = requests.post(f"{base}/hooks/{route}?token=im-token-123456", json=body, timeout=5)
    else:
        headers = {"X-Bridge-Token": TOKENS[route]}
        r = requests.post(f"{base}/hooks/{route}", json=body, headers=headers, timeout=5)
    r.raise_for_status()
    return r.json()["deliveryId"]


def wait(base: str, delivery_id: str, statuses: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = requests.get(f"{base}/deliveries/{delivery_id}", timeout=5).json()["status"]
        if status in statuses:
            return
        time.sleep(0.1)
    raise SystemExit(f"{delivery_id} did not become {statuses}")


def sandbox_config(sandbox: str, **options) -> None:
    requests.post(f"{sandbox}/_sandbox/config", json=options, timeout=5).raise_for_status()


def main() -> int:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base, sandbox = start_dev(Path(tmp))
        try:
            for route, body in LEADS:
                wait(base, post(base, route, body), ("delivered",))
            sandbox_config(sandbox, fail_rate=1.0)
            failed = [post(base, route, body) for route, body in FAILING]
            for delivery_id in failed:
                wait(base, delivery_id, ("failed",))
            sandbox_config(sandbox, fail_rate=0.0)
            post(base, "indiamart", SKIPPED)
            post(base, *LEADS[0])  # the same lead again: a duplicate

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{base}/admin/")
                page.get_by_label("Admin token").fill(TOKEN)
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("heading", name="Overview").wait_for()
                shots = {
                    "overview": f"{base}/admin/",
                    "deliveries": f"{base}/admin/deliveries",
                    "delivery": f"{base}/admin/deliveries/{failed[0]}",
                    "failed": f"{base}/admin/failed",
                }
                for name, url in shots.items():
                    page.goto(url)
                    path = OUT / f"admin-{name}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(path.relative_to(ROOT))
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps({"failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
