"""The shipped systemd unit: it verifies, and it is sandboxed tightly."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import LOOKALIKE

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "lookalike.service"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this installation's `lookalike`."""
    text = UNIT.read_text().replace("/opt/lookalike/bin/lookalike", str(LOOKALIKE))
    path = tmp_path / "lookalike.service"
    path.write_text(text)
    return path


def test_unit_verifies(tmp_path: Path) -> None:
    done = subprocess.run([str(ANALYZE), "verify", str(unit_here(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lookalike.service" not in done.stderr, done.stderr


def test_unit_exposure_is_at_most_2(tmp_path: Path) -> None:
    done = subprocess.run([str(ANALYZE), "security", "--offline=true", str(unit_here(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for lookalike\.service: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    settings = [line.split("=", 1) for line in UNIT.read_text().splitlines()
                if "=" in line and not line.startswith("#")]
    keys = {key: value for key, value in settings}
    assert keys["Type"] == "notify"
    assert int(keys["WatchdogSec"]) > 0
    assert keys["Restart"] == "on-failure"
    assert keys["PrivateNetwork"] == "yes" and keys["NoNewPrivileges"] == "yes"
    assert "run" in keys["ExecStart"].split()
