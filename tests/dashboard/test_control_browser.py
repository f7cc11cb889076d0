"""A real browser drives a study: headless Chromium (OS package) through Selenium and chromium-driver.

Skips without a browser locally; on CI (``CI=true``) a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.dashboard.conftest import n_complete, wait_for


@pytest.fixture
def browser_paths():
    """``(chromium binary, chromedriver)``, or skip (fail on CI) with the reason — before any study is made."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("chromium (.ci/chromium.sh installs it)")
    if driver is None:
        missing.append("chromedriver (apt: chromium-driver)")
    if missing:
        msg = f"no browser for the dashboard test: missing {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


@pytest.mark.slow
def test_browser_submits_a_resume_and_sees_the_new_trials(browser_paths, driven, tmp_path):
    chromium, chromedriver = browser_paths
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dash = driven
    sid = dash.studies()["ctl"]["study_id"]
    before = n_complete(dash.study("ctl"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(chromedriver), options=opts)
    wait = WebDriverWait(browser, 60)
    try:
        # the study page: its Pareto-front plot; the study note links to the control form
        # through the link the dashboard printed: its token becomes the cookie the forms' writes carry
        browser.get(f"{dash.base}/dashboard/studies/{sid}?token={dash.token}")
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[normalize-space()='Pareto Front']")))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point"))
        browser.save_screenshot(str(tmp_path / "1-study-front.png"))
        browser.find_element(By.CSS_SELECTOR, "li[title='Note'] a").click()  # the study note's page
        wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "control form"))).click()

        # the control form, on the waiting trial of the control study
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[normalize-space()='Set User Attributes Form']")))
        field = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//label[starts-with(normalize-space(.), 'trials - ')]/following::input[1]")))
        resume = browser.find_element(By.XPATH, "//label[normalize-space()='resume']//input")
        assert resume.is_selected()  # the default choice
        assert "Pareto front" in browser.find_element(By.TAG_NAME, "body").text  # the front is on the form's page
        field.send_keys("2")
        time.sleep(1.5)  # the dashboard's text fields report their value after a short delay
        browser.save_screenshot(str(tmp_path / "2-control-form.png"))
        t0 = time.monotonic()
        browser.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
        snack = wait.until(lambda b: [e.text for e in b.find_elements(By.ID, "notistack-snackbar") if e.text])
        assert "Successfully updated trial" in snack[0], snack

        # the new trials appear
        wait_for(lambda: n_complete(dash.study("ctl")) > before, 120, "the first new trial", 0.25)
        first_s = time.monotonic() - t0
        wait_for(lambda: n_complete(dash.study("ctl")) >= before + 2, 120, "the second new trial")
        browser.get(f"{dash.base}/dashboard/studies/{sid}/trials")
        wait.until(ec.presence_of_element_located((By.XPATH, f"//*[normalize-space()='{before + 2} Trials']")))
        browser.save_screenshot(str(tmp_path / "3-new-trials.png"))
        print(f"\nbrowser: submit -> first new trial {first_s:.1f} s; screenshots in {tmp_path}")
    finally:
        browser.quit()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["1-study-front.png", "2-control-form.png",
                                                               "3-new-trials.png"]
