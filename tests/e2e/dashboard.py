#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium driven over the W3C WebDriver
protocol (chromedriver on loopback), stdlib only.

    dashboard.py WEBDRIVER_PORT DASHBOARD_URL OUT_DIR PROFILE_DIR

DASHBOARD_URL is the demo's `http://127.0.0.1:PORT/#token=TOKEN`. Checks: login from
the URL and 30 tiles in rooms A, B, C; the Windows and Office bars reach 27/27 and
7/7 from live events (no reload); a tile opens the station page with its events; no
horizontal scroll at 1366x768 and 390x844 (screenshots in OUT_DIR); every control
has an accessible name; no error (CSP, script, failed request) in the browser
console. Exit 1 with a message on the first failure.
"""

import base64
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

DEADLINE = time.monotonic() + 240  # the whole run, start of the browser included
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element key


class Failure(Exception):
    pass


def left(cap):
    """Seconds to wait: at most `cap`, never past the run's deadline."""
    remaining = DEADLINE - time.monotonic()
    if remaining <= 0:
        raise Failure("the test ran out of time (240 s)")
    return min(cap, remaining)


class WebDriver:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=left(timeout)) as answer:
                return json.loads(answer.read() or b"null").get("value")
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read()).get("value", {})
                message = f"{value.get('error')}: {value.get('message', '')[:300]}"
            except ValueError:
                message = str(e)
            raise Failure(f"webdriver {method} {path}: {message}") from None

    def wait_ready(self):
        end = time.monotonic() + left(20)
        while time.monotonic() < end:
            try:
                if self.call("GET", "/status", timeout=2).get("ready"):
                    return
            except (Failure, OSError):
                pass
            time.sleep(0.2)
        raise Failure(f"chromedriver did not answer on {self.base} within 20 s")

    def start(self, profile_dir):
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile_dir}", "--window-size=1366,768"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}
        value = self.call("POST", "/session", caps, timeout=60)
        self.session = value["sessionId"]

    def s(self, path):
        return f"/session/{self.session}{path}"

    def go(self, url):
        self.call("POST", self.s("/url"), {"url": url}, timeout=60)

    def js(self, script, *args):
        return self.call("POST", self.s("/execute/sync"), {"script": script, "args": list(args)})

    def find(self, css):
        return self.call("POST", self.s("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def click(self, element):
        self.call("POST", self.s(f"/element/{element}/click"), {})

    def screenshot(self, path):
        png = base64.b64decode(self.call("GET", self.s("/screenshot"), timeout=60))
        with open(path, "wb") as f:
            f.write(png)

    def resize(self, width, height):
        self.call("POST", self.s("/window/rect"), {"width": width, "height": height})

    def browser_log(self):
        try:
            return self.call("POST", self.s("/se/log"), {"type": "browser"}) or []
        except Failure:
            return []  # not every chromedriver keeps the legacy log endpoint

    def quit(self):
        if self.session:
            try:
                self.call("DELETE", self.s(""), timeout=20)
            except (Failure, OSError):
                pass
            self.session = None


def wait_until(what, seconds, probe, every=0.25):
    """Poll `probe` until it returns a true value; fail naming `what` after `seconds`."""
    end = time.monotonic() + left(seconds)
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= end:
            raise Failure(f"timed out after {seconds} s waiting for {what}")
        time.sleep(every)


STARTED = time.monotonic()


def ok(check, message):
    print(f"ok {check} ({time.monotonic() - STARTED:.0f} s): {message}", flush=True)


def check_login_and_rooms(wd, url):
    wd.go(url)
    layout = wait_until("30 station tiles", 30, lambda: (lambda r: r if r["tiles"] == 30 else None)(wd.js("""
        const tiles = [...document.querySelectorAll('[data-mac]')];
        return {tiles: tiles.length,
                rooms: [...new Set(tiles.map(t => (t.closest('[data-room]') || {dataset: {}}).dataset.room))],
                hash: location.hash,
                session: sessionStorage.length, local: localStorage.length, cookie: document.cookie};""")))
    if sorted(layout["rooms"]) != ["A", "B", "C"]:
        raise Failure(f"the tiles are in rooms {layout['rooms']}, not A, B, C")
    if "token" in layout["hash"]:
        raise Failure(f"the token stays in the address: {layout['hash']}")
    if layout["session"] < 1 or layout["local"] or layout["cookie"]:
        raise Failure(f"the token is not in sessionStorage only: {layout}")
    ok(1, "logged in from #token=, 30 tiles in rooms A, B, C, token in sessionStorage only")


BARS = """
    const bar = (f) => { const b = document.getElementById('bar-' + f);
        return b && [Number(b.getAttribute('aria-valuenow')), Number(b.getAttribute('aria-valuemax')), b.parentElement.textContent.trim()]; };
    return {windows: bar('windows'), office: bar('office'), marker: window.__e2e_marker === 1,
            states: [...document.querySelectorAll('[data-mac]')].map(t => t.dataset.state)};"""


def check_live_bars(wd):
    wd.js("window.__e2e_marker = 1;")  # gone if the page reloads
    first = wd.js(BARS)
    seen = set()
    readings = []

    def reached():
        now = wd.js(BARS)
        if not now["marker"]:
            raise Failure("the page reloaded while the campaign ran")
        seen.update(s for s in now["states"] if s != "idle")
        readings.append((now["windows"][0], now["office"][0]))
        return now if now["windows"][:2] == [27, 27] and now["office"][:2] == [7, 7] else None

    last = wait_until("Windows 27/27 and Office 7/7 on the bars", 120, reached, every=0.3)
    if first["windows"][:2] == [27, 27] and first["office"][:2] == [7, 7]:
        raise Failure("the bars were at 27/27 and 7/7 before the page could watch them rise")
    if not seen:
        raise Failure("no tile showed a state other than idle while the campaign ran")
    for family, (value, top, text) in (("windows", last["windows"]), ("office", last["office"])):
        if f"{value} / {top}" not in text:
            raise Failure(f"the {family} bar's text is {text!r}, not '{value} / {top}'")
    start = f"{first['windows'][0]}/{first['windows'][1]}, {first['office'][0]}/{first['office'][1]}"
    ok(2, f"bars rose live from {start} to 27/27, 7/7 in {len(readings)} polls, no reload; "
          f"states seen: {', '.join(sorted(seen))}")


def no_horizontal_scroll(wd, where):
    sizes = wd.js("return [document.documentElement.scrollWidth, window.innerWidth, window.innerHeight];")
    if sizes[0] > sizes[1]:
        wide = wd.js("""return [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .slice(0, 5).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className);""")
        raise Failure(f"{where}: scrolls sideways ({sizes[0]} px wide in {sizes[1]} px): {wide}")
    return sizes


def check_station_page(wd, out):
    sizes = no_horizontal_scroll(wd, "dashboard at 1366x768")
    wd.screenshot(os.path.join(out, "dashboard-1366x768.png"))
    tile = wd.find('[data-room="A"] [data-mac]')
    mac = wd.js("return arguments[0].dataset.mac;", {ELEMENT: tile})
    wd.click(tile)

    def shown():
        page = wd.js("""const p = document.getElementById('station-page');
            return p && !p.hidden && p.offsetParent !== null ? {text: p.innerText, hash: location.hash,
                events: p.querySelectorAll('#station-events li').length} : null;""")
        return page if page and mac in page["text"] and page["events"] > 0 else None

    page = wait_until(f"the station page of {mac} with its events", 15, shown)
    if page["hash"] != f"#station={mac}":
        raise Failure(f"the station page's address is {page['hash']!r}, not #station={mac}")
    no_horizontal_scroll(wd, "station page at 1366x768")
    wd.screenshot(os.path.join(out, "dashboard-station.png"))
    ok(3, f"tile {mac} opens #station-page with {page['events']} events")
    ok("4a", f"1366x768 (viewport {sizes[1]}x{sizes[2]}): no horizontal scroll on the dashboard and the station page")
    wd.click(wd.find("#station-back"))
    wait_until("the dashboard after Back", 10, lambda: wd.js(
        "return !document.getElementById('dashboard').hidden && location.hash === '';"))


def check_phone(wd, out):
    wd.resize(390, 844)
    width = wait_until("a 390 px wide viewport", 10, lambda: (lambda w: w if w <= 390 else None)(
        wd.js("return window.innerWidth;")))
    time.sleep(0.3)  # a frame to lay out again
    sizes = no_horizontal_scroll(wd, "dashboard at 390x844")
    wd.screenshot(os.path.join(out, "dashboard-390x844.png"))
    ok("4b", f"390x844 (viewport {width}x{sizes[2]}): no horizontal scroll; screenshots in {out}")


def check_names(wd):
    missing = wd.js("""
        const named = (e) => {
            if ((e.getAttribute('aria-label') || '').trim()) return true;
            const by = e.getAttribute('aria-labelledby');
            if (by && by.split(/\\s+/).some(id => (document.getElementById(id) || {}).textContent?.trim())) return true;
            if (e.labels && [...e.labels].some(l => l.textContent.trim())) return true;
            if (e.closest('label') && e.closest('label').textContent.trim()) return true;
            return (e.textContent || '').trim() !== '' && !['INPUT', 'SELECT'].includes(e.tagName);
        };
        const all = [...document.querySelectorAll('button, input, select, textarea, [data-mac]')];
        return {count: all.length, missing: all.filter(e => !named(e)).map(e => e.outerHTML.slice(0, 120))};""")
    if missing["missing"]:
        raise Failure(f"controls without an accessible name: {missing['missing'][:5]}")
    ok(5, f"all {missing['count']} buttons, inputs, selects and tiles have an accessible name")


def check_console(wd):
    log = wd.browser_log()
    errors = [e.get("message", "") for e in log if e.get("level") == "SEVERE"]
    if errors:
        raise Failure(f"errors in the browser console (CSP or script): {errors[:3]}")
    ok(6, f"no errors in the browser console ({len(log)} entries read)")


def main():
    port, url, out, profile = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    wd = WebDriver(port)
    try:
        wd.wait_ready()
        wd.start(profile)
        wd.resize(1366, 768)
        check_login_and_rooms(wd, url)
        check_live_bars(wd)
        check_station_page(wd, out)
        check_phone(wd, out)
        check_names(wd)
        check_console(wd)
    except Failure as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"FAIL: the driver broke: {e!r}", flush=True)
        return 1
    finally:
        wd.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
