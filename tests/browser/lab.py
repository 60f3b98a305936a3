"""Drive a notebook in JupyterLab through Playwright (sync API) for the real-browser tests.

Typical use, with the ``jupyterlab_url`` and ``browser_page`` fixtures of ``conftest.py``::

    path = lab.open_notebook(page, jupyterlab_url, "notebooks/viewer.ipynb")  # opens a copy
    lab.run_all_cells(page)
    before = lab.image_src(page, "ctlib-viewer-axial-image")
    lab.move_slider(page, "ctlib-viewer-axial-slider", 3)
    lab.wait_for_image_change(page, "ctlib-viewer-axial-image", before)
    lab.select_toggle(page, "ctlib-viewer-window", "lung")
    lab.save_screenshot(page, "viewer.png")
    lab.close_notebook(page)

Widgets are found by the CSS class the notebook gives them with ipywidgets' ``add_class``; JupyterLab
is driven through ``window.jupyterapp`` (the server runs with ``--LabApp.expose_app_in_browser``).
Every wait has a timeout (seconds) and fails with what the page showed, never hangs.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import shutil
import time
from pathlib import Path

from lab_server import ARTIFACTS_DIR, REPO_ROOT

try:
    from playwright.sync_api import Browser, Locator, Page, Playwright, expect
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:  # importable without Playwright: the fixtures then skip, or fail when CI is set
    expect = None
    PlaywrightTimeoutError = TimeoutError

# Debian's package (`apt-get install chromium`); `playwright install` cannot download browsers here.
CHROMIUM_EXECUTABLE = os.environ.get("CTLIB_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium as root in a container: no sandbox (root), no GPU, /tmp instead of a small
# /dev/shm, and nothing that phones home. Playwright gives it a fresh temporary --user-data-dir.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
BROWSER_ARTIFACTS_DIR = ARTIFACTS_DIR / "browser"

_CLASS_RE = re.compile(r"^-?[_a-zA-Z][-_a-zA-Z0-9]*$")
_counter = itertools.count()
# sha256 of each notebook file when it was opened: close_notebook checks nothing wrote over it.
_opened: dict[str, str] = {}

# JavaScript prelude: the notebook panel opened last by open_notebook (or the current one).
_PANEL_JS = """
const app = window.jupyterapp;
const wantedPath = window.__ctlibNotebookPath;
const findPanel = () => {
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.content && w.sessionContext && (!wantedPath || w.context.path === wantedPath)) {
      return w;
    }
  }
  throw new Error('no open notebook' + (wantedPath ? ' at ' + wantedPath : ''));
};
"""


# --- browser ------------------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    """Launch Debian's headless Chromium through Playwright."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM_EXECUTABLE, headless=True, args=CHROMIUM_ARGS, timeout=60_000
    )


def save_screenshot(page: Page, name: str, full_page: bool = False) -> Path:
    """Save a PNG under ``test-artifacts/`` (gitignored) at the repo root; returns its path."""
    path = ARTIFACTS_DIR / name
    if path.suffix != ".png":
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


# --- plumbing -----------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def diagnostics(page: Page) -> str:
    """What the page shows right now: dialogs, kernel state, error outputs, ctlib widgets."""
    try:
        info = page.evaluate(
            """() => {
              const text = (sel) => [...document.querySelectorAll(sel)]
                .map(e => e.innerText.trim()).filter(Boolean);
              const classes = new Set();
              for (const el of document.querySelectorAll('[class*="ctlib-"]')) {
                for (const c of el.classList) if (c.startsWith('ctlib-')) classes.add(c);
              }
              let kernel = 'n/a';
              try {
                const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                kernel = w && w.sessionContext ? w.sessionContext.kernelDisplayStatus : 'no notebook';
              } catch (e) { kernel = String(e); }
              return {
                url: location.href,
                jupyterapp: !!window.jupyterapp,
                kernel,
                dialogs: text('.jp-Dialog'),
                errors: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
                outputs: text('.jp-OutputArea-output').map(t => t.slice(0, 200)).slice(0, 10),
                ctlibClasses: [...classes].sort(),
              };
            }"""
        )
    except Exception as error:  # the page itself may be gone
        return f"<no diagnostics: {error!r}>"
    return "\n".join(f"  {key}: {value}" for key, value in info.items())


def _run_js(page: Page, body: str, arg=None, timeout: float = 30.0, what: str = "JupyterLab call"):
    """Run async JavaScript ``body`` (which sees ``arg`` and the panel prelude) with a timeout.

    ``page.evaluate`` itself has no timeout, so the promise is started, its outcome parked on
    ``window`` and waited for with ``wait_for_function``.
    """
    key = f"__ctlibJs{next(_counter)}"
    page.evaluate(
        f"""([key, arg]) => {{
          window[key] = {{done: false}};
          (async () => {{ {_PANEL_JS} {body} }})().then(
            value => {{ window[key] = {{done: true, value: value === undefined ? null : value}}; }},
            error => {{ window[key] = {{done: true, error: String(error && error.stack || error)}}; }});
        }}""",
        [key, arg],
    )
    try:
        page.wait_for_function("key => window[key].done", arg=key, timeout=_ms(timeout), polling=100)
    except PlaywrightTimeoutError:
        raise AssertionError(f"{what}: no answer within {timeout:.0f} s\n{diagnostics(page)}") from None
    result = page.evaluate("key => { const r = window[key]; delete window[key]; return r; }", key)
    if "error" in result:
        raise AssertionError(f"{what} failed: {result['error']}\n{diagnostics(page)}")
    return result["value"]


# --- notebooks ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_notebook(
    page: Page,
    base_url: str,
    relative_path: str | os.PathLike,
    copy: bool = True,
    kernel_name: str = "python3",
    timeout: float = 60.0,
) -> str:
    """Open a notebook (path relative to the repo root) in JupyterLab and wait for an idle kernel.

    With ``copy`` (the default) a notebook outside ``test-artifacts/`` is first copied to
    ``test-artifacts/browser/<name>.ipynb`` and the copy is opened, so the committed notebook is never
    touched (autosave is off as well). Notebooks resolve their files from the repository root
    (``ctlib.paths``), so a copy runs like the original. Returns the opened path (relative to the root).
    """
    source = (REPO_ROOT / relative_path).resolve()
    if not source.is_file():
        raise FileNotFoundError(source)
    if copy and ARTIFACTS_DIR not in source.parents:
        target = BROWSER_ARTIFACTS_DIR / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        source = target
    path = source.relative_to(REPO_ROOT).as_posix()
    _opened[path] = _sha256(source)

    page.goto(base_url.rstrip("/") + "/lab", wait_until="domcontentloaded", timeout=_ms(timeout))
    try:
        page.wait_for_function(
            "() => !!(window.jupyterapp && window.jupyterapp.commands)", timeout=_ms(timeout)
        )
    except PlaywrightTimeoutError:
        raise AssertionError(
            "window.jupyterapp never appeared: is the server started with "
            "--LabApp.expose_app_in_browser=True?\n"
            + diagnostics(page)
        ) from None
    page.evaluate("path => { window.__ctlibNotebookPath = path; }", path)
    _run_js(
        page,
        """
        await app.restored;
        const panel = await app.commands.execute('docmanager:open',
          {path: arg.path, factory: 'Notebook', kernel: {name: arg.kernel}});
        await panel.context.ready;
        await panel.sessionContext.ready;
        app.shell.activateById(panel.id);
        return panel.id;
        """,
        {"path": path, "kernel": kernel_name},
        timeout=timeout,
        what=f"opening {path}",
    )
    wait_for_idle_kernel(page, timeout=timeout)
    return path


def _kernel_state(page: Page) -> dict:
    if page.evaluate("() => !!window.jupyterapp"):
        return _run_js(
            page,
            """
            const panel = findPanel();
            const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
            const pending = [...panel.node.querySelectorAll('.jp-InputPrompt')]
              .filter(p => p.textContent.includes('*')).length;
            return {status: kernel ? kernel.status : 'no kernel', pending};
            """,
            timeout=10,
            what="reading the kernel status",
        )
    # Without window.jupyterapp: the toolbar's execution indicator and the [*] prompts.
    return page.evaluate(
        """() => {
          const panel = '.jp-NotebookPanel:not(.lm-mod-hidden)';
          const ind = document.querySelector(panel + ' .jp-Notebook-ExecutionIndicator');
          const pending = [...document.querySelectorAll(panel + ' .jp-InputPrompt')]
            .filter(p => p.textContent.includes('*')).length;
          return {status: ind ? ind.getAttribute('data-status') : 'unknown', pending};
        }"""
    )


def wait_for_idle_kernel(page: Page, timeout: float = 60.0, settle: float = 0.5) -> None:
    """Wait until the notebook's kernel is idle, no cell shows ``[*]``, and that lasts ``settle`` s."""
    deadline = time.monotonic() + timeout
    idle_since = None
    state: dict = {}
    while time.monotonic() < deadline:
        state = _kernel_state(page)
        if state["status"] == "dead":
            raise AssertionError(f"the kernel died\n{diagnostics(page)}")
        if state["status"] == "idle" and state["pending"] == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settle:
                return
        else:
            idle_since = None
        time.sleep(0.1)
    raise AssertionError(f"kernel not idle within {timeout:.0f} s (last: {state})\n{diagnostics(page)}")


def cell_errors(page: Page) -> list[str]:
    """``ename: evalue`` of every error output in the open notebook."""
    return _run_js(
        page,
        """
        const errors = [];
        for (const cell of findPanel().content.widgets) {
          if (cell.model.type !== 'code') continue;
          for (const out of cell.model.outputs.toJSON()) {
            if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
          }
        }
        return errors;
        """,
        what="reading cell errors",
    )


def run_all_cells(page: Page, timeout: float = 120.0, raise_on_error: bool = True) -> None:
    """Run every cell (``notebook:run-all-cells``) and wait until the kernel is idle again.

    Falls back to the Run menu when ``window.jupyterapp`` is not exposed. With ``raise_on_error``,
    an error output in any cell fails with its ``ename: evalue``.
    """
    start = time.monotonic()
    if page.evaluate("() => !!window.jupyterapp"):
        _run_js(
            page,
            """
            const panel = findPanel();
            app.shell.activateById(panel.id);
            // Resolves once every cell has run (or one failed).
            return await app.commands.execute('notebook:run-all-cells');
            """,
            timeout=timeout,
            what="notebook:run-all-cells",
        )
    else:
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_for_idle_kernel(page, timeout=max(5.0, timeout - (time.monotonic() - start)))
    if raise_on_error and page.evaluate("() => !!window.jupyterapp"):
        errors = cell_errors(page)
        if errors:
            raise AssertionError("cells raised: " + "; ".join(errors) + "\n" + diagnostics(page))


def close_notebook(page: Page, shutdown_kernel: bool = True) -> None:
    """Close the open notebook without saving (its kernel shut down), then check its file is untouched."""
    path = page.evaluate("() => window.__ctlibNotebookPath || null")
    _run_js(
        page,
        """
        const panel = findPanel();
        panel.context.model.dirty = false;  // no "save changes?" dialog, nothing written
        if (arg) await panel.sessionContext.shutdown();
        panel.dispose();
        window.__ctlibNotebookPath = undefined;
        """,
        shutdown_kernel,
        what="closing the notebook",
    )
    if path in _opened:
        digest = _opened.pop(path)
        if _sha256(REPO_ROOT / path) != digest:
            raise AssertionError(f"JupyterLab wrote over {path} although autosave is off")


# --- widgets ------------------------------------------------------------------------------------


def _check_class(css_class: str) -> str:
    if not _CLASS_RE.match(css_class):
        raise ValueError(f"not a plain CSS class name: {css_class!r}")
    return css_class


def find_widget(page: Page, css_class: str, index: int = 0, timeout: float = 30.0) -> Locator:
    """The ``index``-th rendered widget tagged with ``widget.add_class(css_class)``, once visible."""
    locator = page.locator(f".{_check_class(css_class)}").nth(index)
    try:
        locator.wait_for(state="visible", timeout=_ms(timeout))
    except PlaywrightTimeoutError:
        raise AssertionError(
            f"no visible widget with class {css_class!r} (#{index}) within {timeout:.0f} s "
            "(if widgets show as plain text, e.g. 'IntSlider(...)', "
            "the ipywidgets labextension did not load)\n" + diagnostics(page)
        ) from None
    locator.scroll_into_view_if_needed()
    return locator


def widget_text(page: Page, css_class: str, index: int = 0) -> str:
    """The visible text of a widget (e.g. an HTML or Label legend)."""
    return find_widget(page, css_class, index).inner_text().strip()


def wait_for_text(
    page: Page, css_class: str, text: str | re.Pattern, index: int = 0, timeout: float = 30.0
) -> None:
    """Wait until the widget's text contains ``text`` (a string, or a regex it must match)."""
    expect(find_widget(page, css_class, index)).to_contain_text(text, timeout=_ms(timeout))


_IMG_JS = (
    "el => { const img = el.tagName === 'IMG' ? el : el.querySelector('img'); return img ? img.src : null; }"
)


def image_src(page: Page, css_class: str, index: int = 0) -> str:
    """The current ``src`` (a ``blob:`` or ``data:`` URL) of the ``<img>`` that is, or is inside,
    the widget."""
    src = find_widget(page, css_class, index).evaluate(_IMG_JS)
    if not src:
        raise AssertionError(f"widget {css_class!r} holds no <img> with a src\n{diagnostics(page)}")
    return src


def image_bytes(page: Page, css_class: str, index: int = 0) -> bytes:
    """The bytes behind the widget's image (fetched in the page, so blob: URLs work)."""
    encoded = find_widget(page, css_class, index).evaluate(
        """async el => {
          const img = el.tagName === 'IMG' ? el : el.querySelector('img');
          const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
          let s = '';
          for (let i = 0; i < bytes.length; i += 0x8000) {
            s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          }
          return btoa(s);
        }"""
    )
    return base64.b64decode(encoded)


def wait_for_image_change(
    page: Page, css_class: str, old_src: str, index: int = 0, timeout: float = 30.0
) -> str:
    """Wait until the widget's image ``src`` differs from ``old_src``; returns the new one.

    ipywidgets makes a new blob URL for every new value, so a changed src means the kernel sent a new
    image; compare ``image_bytes`` to check the pixels changed too.
    """
    find_widget(page, css_class, index)
    try:
        handle = page.wait_for_function(
            f"""([cls, index, old]) => {{
              const el = document.querySelectorAll('.' + cls)[index];
              const src = el ? ({_IMG_JS})(el) : null;
              return src && src !== old ? src : false;
            }}""",
            arg=[css_class, index, old_src],
            timeout=_ms(timeout),
            polling=100,
        )
    except PlaywrightTimeoutError:
        raise AssertionError(
            f"image of {css_class!r} did not change within {timeout:.0f} s\n{diagnostics(page)}"
        ) from None
    return handle.json_value()


def slider_readout(page: Page, css_class: str, index: int = 0) -> str:
    """The slider's readout text (its displayed value)."""
    return find_widget(page, css_class, index).locator(".widget-readout").first.inner_text().strip()


def move_slider(page: Page, css_class: str, steps: int, index: int = 0, handle: int = 0) -> str:
    """Move a slider by ``steps`` (negative: down) with the keyboard, one ``step`` per key press.

    Focuses the noUiSlider handle (``handle``: 0, or 1 for a range slider's upper handle) and presses
    ArrowRight/ArrowLeft (ArrowUp/ArrowDown for a vertical slider). Each press updates the model (as
    a drag would, with ``continuous_update``). Returns the readout text afterwards.
    """
    widget = find_widget(page, css_class, index)
    knob = widget.locator(".noUi-handle").nth(handle)
    knob.focus()
    vertical = "widget-vslider" in (widget.get_attribute("class") or "")
    key = (
        ("ArrowUp" if steps > 0 else "ArrowDown")
        if vertical
        else ("ArrowRight" if steps > 0 else "ArrowLeft")
    )
    for _ in range(abs(steps)):
        knob.press(key)
    return slider_readout(page, css_class, index)


def set_slider_value(page: Page, css_class: str, value: float | int, index: int = 0) -> str:
    """Type ``value`` into the slider's editable readout and press Enter; returns the readout text."""
    readout = find_widget(page, css_class, index).locator(".widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
    expect(readout).to_have_text(str(value), timeout=10_000)
    return readout.inner_text().strip()


def select_toggle(page: Page, css_class: str, label: str, index: int = 0, timeout: float = 10.0) -> None:
    """Choose ``label`` in a ToggleButtons (click), Dropdown/Select (option) or RadioButtons widget."""
    widget = find_widget(page, css_class, index)
    kind = widget.evaluate(
        """el => el.querySelector('select') ? 'select'
             : el.querySelector('input[type=radio]') ? 'radio'
             : el.querySelector('button') ? 'buttons' : el.tagName.toLowerCase()"""
    )
    # \s+ between words: ipywidgets shows spaces in option labels as non-breaking spaces.
    exact = re.compile(r"^\s*" + r"\s+".join(map(re.escape, label.split())) + r"\s*$")
    if kind == "select":
        select = widget.locator("select").first
        select.select_option(label=label, timeout=_ms(timeout))
        expect(select.locator("option:checked")).to_have_text(exact, timeout=_ms(timeout))
    elif kind == "radio":
        radio = widget.get_by_label(label, exact=True)
        radio.check(timeout=_ms(timeout))
        expect(radio).to_be_checked(timeout=_ms(timeout))
    elif kind == "buttons":
        button = widget.locator("button").filter(has_text=exact)
        if button.count() != 1:
            options = widget.locator("button").all_inner_texts()
            raise AssertionError(f"{css_class!r}: no single button {label!r} among {options}")
        button.click(timeout=_ms(timeout))
        expect(button).to_have_class(re.compile(r"\bmod-active\b"), timeout=_ms(timeout))
    else:
        raise AssertionError(f"{css_class!r} is a <{kind}>, not a ToggleButtons/Dropdown/RadioButtons widget")
