"""The dashboard in a real browser: Debian's chromium, driven by playwright, opens `shoal dashboard`'s link on a
swarm of one manager and two workers, and follows what the CLI and a killed worker do; the page's own
actions (scale, drain, update image, rollback, each confirmed) show in the CLI."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Dialog, Page, Request, expect, sync_playwright

from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster

DEADLINE = 30.0  # seconds, for what the swarm does; the page follows within it
PHONE = {"width": 390, "height": 844}
LINK = re.compile(r"http://127\.0\.0\.1:\d+/ui/#token=\S+")


class Dashboard:
    """`shoal dashboard --no-browser` against the cluster's manager; `link` is what it printed."""

    def __init__(self, cluster: Cluster) -> None:
        env = dict(os.environ, SHOAL_HOST=f"unix://{cluster.manager.socket}")
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal", "dashboard", "--no-browser"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout or []], daemon=True).start()
        self.link = wait_for("the dashboard's link", lambda: self._link(lines), timeout=DEADLINE)

    def _link(self, lines: queue.Queue[str]) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"shoal dashboard exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        try:
            found = LINK.search(lines.get(timeout=0.5))
        except queue.Empty:
            return None
        return found.group(0) if found else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: scripts/install-deps.sh installs it"
    with sync_playwright() as playwright:
        # The system's browser, never one of playwright's downloads; root needs --no-sandbox.
        launched = playwright.chromium.launch(executable_path=chromium,
                                              args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            yield launched
        finally:
            launched.close()


def running_cards(page: Page, service: str, where: str = ".node") -> object:
    return page.locator(f'{where} .task[data-service="{service}"][data-state="running"][data-desired="running"]')


def ids_on_page(page: Page, service: str) -> set[str]:
    cards = running_cards(page, service, '.node[data-state="ready"]')
    return {str(card.get_attribute("data-task-id")) for card in cards.all()}  # type: ignore[attr-defined]


def cli_value(cluster: Cluster, *args: str) -> str:
    return cluster.ok(*args).strip()


def test_the_dashboard_follows_the_swarm_and_acts_on_it(cluster: Cluster, browser: Browser) -> None:
    dashboard = Dashboard(cluster)
    try:
        page = browser.new_page(viewport=PHONE)
        dialogs: list[str] = []
        answers = iter([False])  # the first confirmation is declined: nothing may be sent for it

        def confirm(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            if next(answers, True):
                dialog.accept()
            else:
                dialog.dismiss()

        page.on("dialog", confirm)
        requests: list[str] = []
        page.on("request", lambda request: requests.append(_path(request)))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(dashboard.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=DEADLINE * 1000)
        assert "#token=" not in page.url  # the spent link is out of the address bar
        expect(page.locator(".node")).to_have_count(3)
        expect(page.locator('.node[data-hostname="worker2"]')).to_have_attribute("data-state", "ready")

        # A service created with the CLI: its three tasks appear, one on each node (the spread).
        cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "3", "busybox", "sleep", "600")
        expect(running_cards(page, "web")).to_have_count(3, timeout=DEADLINE * 1000)
        for name in ("manager1", "worker1", "worker2"):
            expect(running_cards(page, "web", f'.node[data-hostname="{name}"]')).to_have_count(1)
        expect(page.locator('.service[data-name="web"] .replicas')).to_have_text("3/3")

        # A task no node can take waits in the pending list, with the scheduler's reason.
        cluster.ok("service", "create", "-d", "--name", "picky", "--constraint", "node.labels.zone==nowhere",
                   "busybox", "sleep", "600")
        expect(page.locator('#pending li[data-service="picky"] .err')).to_contain_text(
            "no suitable node", timeout=DEADLINE * 1000)
        expect(page.locator('.service[data-name="picky"] .replicas')).to_have_text("0/1")

        # A job shows its completions as `service ls` does; a global service has no Scale box to offer.
        cluster.ok("service", "create", "-d", "--name", "once", "--mode", "replicated-job", "--replicas", "2",
                   "busybox", "true")
        expect(page.locator('.service[data-name="once"] .replicas')).to_have_text(
            re.compile(r"\(2/2 completed\)$"), timeout=DEADLINE * 1000)
        cluster.ok("service", "create", "-d", "--name", "everywhere", "--mode", "global", "busybox", "sleep", "600")
        expect(page.locator('.service[data-name="everywhere"] .replicas')).to_have_text(
            re.compile(r"^\d+/3$"), timeout=DEADLINE * 1000)
        expect(page.locator('.service[data-name="everywhere"] .scale-form')).to_be_hidden()
        expect(page.locator('.service[data-name="web"] .scale-form')).to_be_visible()

        # A phone's width: the page itself never scrolls sideways; the node columns scroll in their box.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("(() => { const c = document.getElementById('nodes'); "
                             "return c.scrollWidth > c.clientWidth; })()")

        # Worker2 dies: its column turns down, and its task is replaced on a node that is up.
        cluster.kill("worker2")
        expect(page.locator('.node[data-hostname="worker2"]')).to_have_attribute("data-state", "down",
                                                                                 timeout=DEADLINE * 1000)
        running = {t["ID"] for t in cluster.wait_running("web", 3, timeout=DEADLINE)}
        wait_for("the page to show the running tasks the API lists", lambda: ids_on_page(page, "web") == running,
                 timeout=DEADLINE)
        expect(page.locator('.service[data-name="web"] .replicas')).to_have_text("3/3")

        # Scale from the page, declined once (nothing is sent), then confirmed: the CLI sees 5.
        web = page.locator('.service[data-name="web"]')
        web.locator(".scale-input").fill("4")
        web.locator(".scale").click()
        web.locator(".scale-input").fill("5")
        web.locator(".scale").click()
        wait_for("the CLI to see 5 replicas", lambda: cli_value(
            cluster, "service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", "web") == "5",
            timeout=DEADLINE)
        assert dialogs == ["Scale service web to 4 replicas?", "Scale service web to 5 replicas?"]
        # The declined scale never reached the daemon: the spec before 5 is still the one with 3.
        assert cli_value(cluster, "service", "inspect", "--format",
                         "{{.PreviousSpec.Mode.Replicated.Replicas}}", "web") == "3"
        expect(running_cards(page, "web", '.node[data-state="ready"]')).to_have_count(5, timeout=DEADLINE * 1000)
        expect(web.locator(".replicas")).to_have_text("5/5", timeout=DEADLINE * 1000)

        # Drain worker1 from the page: the CLI sees it, and its tasks move to the manager.
        page.locator('.node[data-hostname="worker1"] .availability-action').click()
        expect(page.locator('.node[data-hostname="worker1"]')).to_have_attribute("data-availability", "drain",
                                                                                 timeout=DEADLINE * 1000)
        assert cli_value(cluster, "node", "inspect", "--format", "{{.Spec.Availability}}", "worker1") == "drain"
        expect(running_cards(page, "web", '.node[data-hostname="manager1"]')).to_have_count(
            5, timeout=DEADLINE * 1000)
        expect(running_cards(page, "web", '.node[data-hostname="worker1"]')).to_have_count(0)

        # Update the image from the page, then roll it back: the CLI sees each spec.
        web.locator(".image-input").fill("busybox:1.36")
        web.locator(".update-image").click()
        wait_for("the CLI to see the new image", lambda: cli_value(
            cluster, "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", "web")
            == "busybox:1.36", timeout=DEADLINE)
        expect(web.locator(".image")).to_have_text("busybox:1.36", timeout=DEADLINE * 1000)
        web.locator(".rollback").click()
        wait_for("the CLI to see the rollback", lambda: cli_value(
            cluster, "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", "web")
            == "busybox", timeout=DEADLINE)
        expect(web.locator(".update")).to_have_attribute("data-state", re.compile("rollback"),
                                                          timeout=DEADLINE * 1000)
        assert dialogs[2:] == ["Drain node worker1? Its tasks move to other nodes.",
                               "Update service web to image busybox:1.36?",
                               "Roll service web back to its previous specification?"]

        # Live from one stream: the page read the tasks once and opened one event stream, and polled nothing.
        assert requests.count("/tasks") == 1 and requests.count("/events") == 1, requests
        expect(page.locator("#events li[data-type='node']").first).to_be_visible()
        assert page.locator("#notice").is_hidden()
        assert errors == []
    finally:
        dashboard.stop()


def _path(request: Request) -> str:
    return re.sub(r"^https?://[^/]+", "", request.url).split("?")[0]
