"""The dashboard and "my usage" pages in a real browser: Debian's headless chromium + chromedriver (selenium) against
the portal on a real uvicorn, with a seeded store. Checks what a person sees (tables, the SVG charts, the numbers) and
keeps screenshots in tests/artifacts/portal/. Signing in uses the session cookie oauth.py makes (the OAuth flow
itself is proven against a real hub in test_oauth_hub.py)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from provision.jupyterhub.portal import oauth
from provision.jupyterhub.portal.app import create_app
from provision.jupyterhub.portal.store import Store
from tests.portal.live import NOW, TOKEN, LiveServer, portal_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "portal"
H = timedelta(hours=1)
PREFIX = "/services/usage"

selenium = pytest.importorskip("selenium", reason="selenium is a test dependency (pip install -e .[test])")
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


class FakeCoreV1:
    def __init__(self):
        self.deleted = []

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((namespace, name))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('pages')}/usage.db")
    # bob: one finished 2-hour session with 2 GPUs (4 GPU-hours), 1 core, 4 GiB
    store.add_session(username="bob", start_time=NOW - 5 * H, end_time=NOW - 3 * H, cpu_cores=1, memory_gib=4,
                      gpu=2, node="gpu-node-2", profile="gpu-2")
    # alice: a server running for 2 hours now with 2 GPUs (collector-recorded, so it can be deleted)
    store.record_pod(pod_uid="uid-alice", username="alice", server_name="", namespace="jhub",
                     pod_name="jupyter-alice", node="gpu-node-1", profile="gpu-2", cpu_request=2, cpu_limit=4,
                     memory_request_gib=8, memory_limit_gib=16, gpu=2, npu=0, start_time=NOW - 2 * H, seen_at=NOW)
    store.add_session(username="carol", start_time=NOW - 10 * H, end_time=NOW - 9 * H, cpu_cores=8, memory_gib=32)
    store.set_group_members("ml", ["alice", "bob"])
    store.set_quota("group", "ml", gpu=4, cpu_cores=16, memory_gib=64, gpu_hours=100)
    store.note_collection(NOW - timedelta(seconds=20), True)
    cluster = FakeCoreV1()
    app = create_app(portal_config(), store, core_v1=cluster, collector=None, collector_off_reason="test",
                     clock=lambda: NOW)
    with LiveServer(app) as srv:
        yield srv.url, cluster
    store.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,2000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver, url: str, name: str, admin: bool) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/healthz")  # a page of the site, so the cookie belongs to it
    driver.add_cookie({"name": oauth.SESSION_COOKIE, "value": oauth.session_cookie_value(TOKEN, name, admin),
                       "path": "/", "httpOnly": True})


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def cell(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text.strip()


def bar(driver, chart: str, label: str):
    return driver.find_element(By.CSS_SELECTOR, f'svg#{chart} g.bar[data-label="{label}"]')


def test_the_admin_dashboard_shows_running_servers_usage_charts_and_cost(site, browser):
    url, _ = site
    sign_in(browser, url, "root", admin=True)
    browser.get(url + PREFIX + "/dashboard")
    assert browser.title.startswith("Dashboard")
    # running now: alice's pod with its node, profile and 2 GPUs
    row = browser.find_element(By.CSS_SELECTOR, 'table#running tr[data-user="alice"]')
    assert "gpu-node-1" in row.text and "gpu-2" in row.text
    assert row.find_element(By.CSS_SELECTOR, 'td[data-k="gpu"]').text == "2"
    # usage and cost per user: bob's 2 GPUs x 2 hours = 4 GPU-hours; 4 x 2.5 + 2 core-h x 0.05 + 8 GiB-h x 0.01
    assert cell(browser, 'table#usage-users tr[data-user="bob"] td[data-k="gpu_hours"]') == "4"
    assert cell(browser, 'table#usage-users tr[data-user="bob"] td[data-k="cost"]') == "10.18 EUR"
    assert cell(browser, 'table#usage-users tr[data-user="alice"] td[data-k="gpu_hours"]') == "4"
    assert cell(browser, 'table#usage-groups tr[data-group="ml"] td[data-k="gpu_hours"]') == "8"
    assert cell(browser, 'table#usage-groups tr[data-group="(none)"] td[data-k="gpu_hours"]') == "0"
    assert cell(browser, '#totals b[data-k="gpu_hours"]') == "8"
    # the charts: server-rendered SVG, drawn, bars with the right values
    svg = browser.find_element(By.CSS_SELECTOR, "svg#chart-user-gpu")
    assert svg.is_displayed() and svg.size["width"] > 300
    b = bar(browser, "chart-user-gpu", "bob")
    assert b.get_attribute("data-value") == "4"
    assert float(b.find_element(By.TAG_NAME, "rect").get_attribute("width")) > 100
    assert "4 GPU-h" in b.text
    assert bar(browser, "chart-user-cost", "bob").get_attribute("data-value") == "10.18"
    assert bar(browser, "chart-group-gpu", "ml").get_attribute("data-value") == "8"
    # CSV export link for the same period; nothing on the page comes from elsewhere
    assert "format=csv" in browser.find_element(By.ID, "csv-user").get_attribute("href")
    for el in browser.find_elements(By.CSS_SELECTOR, "[src], link[href]"):
        assert (el.get_attribute("src") or el.get_attribute("href")).startswith(url), el.get_attribute("outerHTML")
    shot(browser, "dashboard.png")


def test_a_period_form_and_deleting_a_pod_with_confirmation(site, browser):
    url, cluster = site
    sign_in(browser, url, "root", admin=True)
    browser.get(url + PREFIX + "/dashboard")
    form = browser.find_element(By.ID, "period-form")
    day = form.find_element(By.NAME, "from")
    browser.execute_script("arguments[0].value = '2026-11-01'; arguments[1].value = '2026-11-14';", day,
                           form.find_element(By.NAME, "to"))
    form.find_element(By.CSS_SELECTOR, "button").click()
    WebDriverWait(browser, 10).until(lambda d: "from=2026-11-01" in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, 'table#usage-users tr[data-user="bob"]') == []  # bob: the 15th
    browser.get(url + PREFIX + "/dashboard")
    browser.find_element(By.CSS_SELECTOR, 'table#running tr[data-user="alice"] a.button').click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "confirm-delete"))
    assert "Delete alice's server?" in browser.find_element(By.TAG_NAME, "h1").text
    assert "jhub/jupyter-alice" in browser.find_element(By.ID, "pod").text
    shot(browser, "confirm-delete.png")
    browser.find_element(By.ID, "confirm-delete").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "notice"))
    assert "Deleted alice's server" in browser.find_element(By.ID, "notice").text
    assert cluster.deleted == [("jhub", "jupyter-alice")]


def test_my_usage_page(site, browser):
    url, _ = site
    sign_in(browser, url, "bob", admin=False)
    browser.get(url + PREFIX + "/")
    assert browser.current_url.endswith(PREFIX + "/me")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Usage of bob"
    assert cell(browser, '#period-usage td[data-k="gpu_hours"]') == "4"
    assert cell(browser, '#period-usage td[data-k="cost"]') == "10.18 EUR"
    quota_gpu = browser.find_element(By.CSS_SELECTOR, '#quota tr[data-k="gpu"]').text
    assert quota_gpu.split()[-2:] == ["0", "4"]  # none in use now, limit 4 (group ml)
    assert browser.find_element(By.CSS_SELECTOR, '#quota tr[data-k="gpu_hours"]').text.split()[-2:] == ["4", "100"]
    svg = browser.find_element(By.CSS_SELECTOR, "svg#chart-me")
    assert svg.is_displayed()
    assert bar(browser, "chart-me", "GPU-hours").get_attribute("data-value") == "4"
    assert len(browser.find_elements(By.CSS_SELECTOR, "table#sessions tr[data-session]")) == 1
    assert browser.find_elements(By.ID, "nav-dashboard") == []  # not an admin
    shot(browser, "my-usage.png")
    browser.get(url + PREFIX + "/dashboard")
    assert "Admins only" in browser.find_element(By.TAG_NAME, "h1").text
