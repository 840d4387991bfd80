"""The web chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
type a message, watch the answer stream in, the reasoning folded apart, settings and errors; a screenshot
is saved with the test's files."""

import shutil

import pytest

from serve_util import serving

pytestmark = [pytest.mark.slow, pytest.mark.ci, pytest.mark.usefixtures("one_thread")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Records every text the answer bubble shows, so the test can tell a streamed answer from one set at once.
RECORD = """
window.__seen = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.classList.contains("answer")) window.__seen.push(el.textContent);
  }
}).observe(document.getElementById("log"), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no browser: `apt-get install chromium chromium-driver` (.ci/run does) to run the page test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,760"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # both paths given: nothing downloads
    yield driver
    driver.quit()


def test_page_streams_an_answer_with_folded_reasoning(browser, chat_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    with serving(chat_run) as (srv, _):
        browser.get(srv.url + "/")
        wait.until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "toggle-settings").click()
        temp = browser.find_element(By.ID, "temperature")
        temp.clear()
        temp.send_keys("0")
        browser.find_element(By.ID, "toggle-settings").click()

        def ask(text):
            n = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
            box = browser.find_element(By.ID, "input")
            box.send_keys(text)
            box.send_keys(Keys.ENTER)
            try:
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) > n
                           and not d.find_elements(By.CSS_SELECTOR, ".msg.streaming"))
            except Exception:
                browser.save_screenshot(str(tmp_path / "failed.png"))
                raise AssertionError(f"no answer to {text!r}; page error: {browser.find_element(By.ID, 'error').text!r}")
            return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]

        browser.execute_script(RECORD)
        cat = ask("Tell me about the cat.")
        assert cat.find_element(By.CLASS_NAME, "answer").text.startswith("The cat sat on the mat")
        seen = browser.execute_script("return window.__seen")
        assert len({s for s in seen if s}) >= 3, seen  # the text grew piece by piece as tokens came

        add = ask("What is 2 plus 3?")  # the long cat exchange leaves no room: it is dropped, with a notice
        assert "oldest exchange was dropped" in browser.find_element(By.CSS_SELECTOR, ".msg.notice").text
        assert add.find_element(By.CLASS_NAME, "answer").text == "5"
        details = add.find_element(By.TAG_NAME, "details")
        assert details.is_displayed() and details.get_attribute("open") is None  # folded
        assert details.find_element(By.CLASS_NAME, "reasoning").get_attribute("textContent") == "2+3=5"
        details.find_element(By.TAG_NAME, "summary").click()  # unfolded by the reader
        assert details.find_element(By.CLASS_NAME, "reasoning").text == "2+3=5"
        browser.save_screenshot(str(tmp_path / "chat.png"))

        # Settings: thinking off → no reasoning block; an impossible max tokens → the server's error shown.
        browser.find_element(By.ID, "toggle-settings").click()
        browser.find_element(By.ID, "thinking").click()
        off = ask("What is 2 plus 3?")
        assert off.find_element(By.CLASS_NAME, "answer").text == "5"
        assert not off.find_element(By.TAG_NAME, "details").is_displayed()
        mt = browser.find_element(By.ID, "max-tokens")
        mt.clear()
        mt.send_keys("100000")
        box = browser.find_element(By.ID, "input")
        box.send_keys("hello", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "400" in browser.find_element(By.ID, "error").text and "256" in browser.find_element(By.ID, "error").text
        browser.save_screenshot(str(tmp_path / "chat_error.png"))
        assert browser.find_element(By.ID, "input").get_attribute("value") == "hello"  # back to be sent again
        # The conversation survives a reload (history in localStorage): the two sums; the dropped exchange
        # and the failed turn are not in it.
        browser.refresh()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == ["What is 2 plus 3?"] * 2
    assert (tmp_path / "chat.png").stat().st_size > 10_000
