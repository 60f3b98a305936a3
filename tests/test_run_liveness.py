"""Run records know whether their run is alive (issue 11): pid, host and heartbeat in run.json."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time

from ctlib import provenance
from ctlib.runs import execute
from ctlib.runs import record as record_io
from ctlib.runs.record import RunRecord


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _iso(seconds_ago: float) -> str:
    return provenance.iso(provenance.utc_now() - dt.timedelta(seconds=seconds_ago))


def test_started_record_carries_pid_host_and_heartbeat():
    record = RunRecord.started("r", notebook=None, notebook_stem="x")
    assert record.pid == os.getpid() and record.host == socket.gethostname()
    assert record.heartbeat_utc is not None and record.effective_status() == "running"
    data = record.to_dict()
    assert {"pid", "host", "heartbeat_utc"} <= set(data) and "resumed_from" not in data


def test_effective_status_tells_killed_from_running():
    host = socket.gethostname()
    alive = RunRecord("a", "running", pid=os.getpid(), host=host, heartbeat_utc=_iso(1))
    assert alive.effective_status() == "running"
    gone = RunRecord("b", "running", pid=_dead_pid(), host=host, heartbeat_utc=_iso(1))
    assert gone.effective_status() == "killed"
    stale = RunRecord("c", "running", pid=os.getpid(), host="another-host", heartbeat_utc=_iso(600))
    assert stale.effective_status() == "killed"
    elsewhere = RunRecord("d", "running", pid=1, host="another-host", heartbeat_utc=_iso(1))
    assert elsewhere.effective_status() == "running"  # another machine's live run: its pid means nothing here
    assert RunRecord("e", "running").effective_status() == record_io.LEGACY_RUNNING
    finished = RunRecord("f", "completed", pid=_dead_pid(), host=host, heartbeat_utc=_iso(600))
    assert finished.effective_status() == "completed"


def test_heartbeat_refreshes_run_json_and_keeps_other_fields(tmp_path):
    RunRecord.started("r", notebook=None, notebook_stem="x").to_file(tmp_path)
    first = record_io.read_record(tmp_path).heartbeat_utc
    record_io.update_record(tmp_path, resumed_from={"run_id": "earlier"})
    time.sleep(1.1)  # heartbeats are ISO times to the second
    with execute._Heartbeat(tmp_path, interval_s=0.05):
        time.sleep(0.3)
    after = record_io.read_record(tmp_path)
    assert after.heartbeat_utc > first and after.resumed_from == {"run_id": "earlier"}
