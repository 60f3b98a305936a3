"""Start and stop a private, headless JupyterLab server for the real-browser tests.

The server listens on 127.0.0.1 only, without token or password (loopback, test-only), serves the
repository root and exposes ``window.jupyterapp`` so the tests can drive JupyterLab's commands.
It is isolated from the user's own Jupyter setup: its config, runtime, user-data, IPython, settings
and workspace folders are fresh temporary folders, while the venv's labextensions and kernelspecs
(``sys.prefix/share/jupyter``, ``sys.prefix/etc/jupyter``) stay visible. Autosave is off, so
JupyterLab never writes over a notebook it opens.

It is stopped by its own process id (``Popen.terminate``, then ``Popen.kill``), never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"

# The ipywidgets front end: without it widgets render as plain text and every widget test fails.
WIDGETS_LABEXTENSION = "@jupyter-widgets/jupyterlab-manager"

# JupyterLab user settings written into the server's private user-settings folder.
USER_SETTINGS: dict[str, dict] = {
    # Never write over the opened notebook (the tests also open copies; see lab.open_notebook).
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    # Keep every cell (and its widgets) attached to the DOM, even off-screen.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    # No news or update toasts over the notebook (and no request to the internet).
    "@jupyterlab/apputils-extension:notification": {
        "checkForUpdates": False,
        "fetchNews": "false",
        "doNotDisturbMode": True,
    },
}

# Variables that would point the server at the user's own Jupyter configuration.
_LEAKY_ENV = ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_TOKEN", "JUPYTER_PORT")


@dataclass
class JupyterLabServer:
    """A running server: ``url`` ends with ``/`` (e.g. ``http://127.0.0.1:40123/``)."""

    url: str
    process: subprocess.Popen
    root_dir: Path
    log_path: Path

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no server log>"


def _write_user_settings(settings_dir: Path) -> None:
    for plugin_id, values in USER_SETTINGS.items():
        package, plugin = plugin_id.split(":")
        path = settings_dir / package / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


def server_command(root_dir: Path, work_dir: Path) -> list[str]:
    """The command line of the test server (port 0: the OS picks a free port)."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        "--ServerApp.port_retries=0",
        # Token-less on loopback. (--ServerApp.token/password are deprecated aliases in jupyter_server 2.)
        "--IdentityProvider.token=",
        "--PasswordIdentityProvider.hashed_password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={work_dir / 'user-settings'}",
        f"--LabApp.workspaces_dir={work_dir / 'workspaces'}",
        # Safety net should this process die without tearing the server down: it exits by itself
        # after 15 idle minutes (kernels idle that long are culled first).
        "--ServerApp.shutdown_no_activity_timeout=900",
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_interval=60",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return command


def server_env(work_dir: Path) -> dict[str, str]:
    """The environment of the test server: the user's Jupyter/IPython folders swapped for empty ones.

    Only the *user-level* folders are replaced; the venv's ``share/jupyter`` (labextensions,
    kernelspecs) and ``etc/jupyter`` (server extensions) are still found through ``sys.prefix``.
    """
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    for name, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_DATA_DIR", "data"),
        ("IPYTHONDIR", "ipython"),
    ):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(work_dir / sub)
    # Like every other test (tests/conftest.py), notebooks run here never write into runs/.
    env["CTLIB_RUNS_DIR"] = str(work_dir / "runs")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_jupyterlab(
    work_dir: Path, log_path: Path, root_dir: Path = REPO_ROOT, timeout: float = 60.0
) -> JupyterLabServer:
    """Start the server and wait until ``/api/status`` answers and the widgets extension is served."""
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_user_settings(work_dir / "user-settings")
    env = server_env(work_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            server_command(root_dir, work_dir),
            cwd=root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches pytest (which tears the server down by
            # pid), not the server's interactive "shut down? (y/n)" prompt.
            start_new_session=True,
        )
    server = JupyterLabServer(url="", process=process, root_dir=root_dir, log_path=log_path)
    try:
        server.url = _wait_until_ready(server, Path(env["JUPYTER_RUNTIME_DIR"]), timeout)
        _check_widgets_extension(server)
    except BaseException:
        stop_jupyterlab(server)
        raise
    return server


def _wait_until_ready(server: JupyterLabServer, runtime_dir: Path, timeout: float) -> str:
    # The server writes jpserver-<its pid>.json (with the port it bound) once it listens; reading
    # that file, rather than probing a port, guarantees we talk to *our* server.
    info_file = runtime_dir / f"jpserver-{server.process.pid}.json"
    deadline = time.monotonic() + timeout
    last_error = "server info file not written yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with code {server.process.returncode} while starting.\n"
                f"Command: {' '.join(server.process.args)}\n--- server log (tail) ---\n{server.log_tail()}"
            )
        if info_file.exists():
            try:
                url = json.loads(info_file.read_text())["url"]
                status, _ = _http_get(url.rstrip("/") + "/api/status", timeout=2)
                if status == 200:
                    return url if url.endswith("/") else url + "/"
                last_error = f"/api/status answered HTTP {status}"
            except (ValueError, KeyError, OSError) as error:  # half-written file, refused connection
                last_error = repr(error)
        time.sleep(0.2)
    raise RuntimeError(
        f"JupyterLab did not answer /api/status within {timeout:.0f} s ({last_error}).\n"
        f"--- server log (tail) ---\n{server.log_tail()}"
    )


def _check_widgets_extension(server: JupyterLabServer) -> None:
    status, page = _http_get(server.url + "lab", timeout=10)
    if status != 200 or WIDGETS_LABEXTENSION not in page:
        raise RuntimeError(
            f"JupyterLab at {server.url} does not list the ipywidgets labextension {WIDGETS_LABEXTENSION} "
            f"(HTTP {status}); is jupyterlab_widgets installed in {sys.prefix}?\n"
            f"--- server log (tail) ---\n{server.log_tail()}"
        )


def _shutdown_kernels(server: JupyterLabServer) -> None:
    """Best effort: ask the server to shut its kernels down before it is stopped."""
    try:
        status, body = _http_get(server.url + "api/kernels", timeout=5)
        if status != 200:
            return
        for kernel in json.loads(body):
            request = urllib.request.Request(server.url + f"api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()
    except (OSError, ValueError, KeyError):
        pass


def stop_jupyterlab(server: JupyterLabServer, timeout: float = 20.0) -> int | None:
    """Stop the server by its own pid: SIGTERM (it then shuts its kernels down), SIGKILL if it hangs."""
    process = server.process
    if process.poll() is None:
        if server.url:
            _shutdown_kernels(server)
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode
