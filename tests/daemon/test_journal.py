"""What TensorFlow writes to stderr, kept out of the journal (`daemon.tensorflow_log`)."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from lookalike.daemon.tensorflow_log import level_of

BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = ("I0000 00:00:1796563205.616899    9012 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results due to floating-point round-off "
          "errors from different computation orders.")


@pytest.mark.parametrize(("line", "level"), [
    (BANNER, logging.DEBUG),
    (ONEDNN, logging.DEBUG),
    (BANNER + ONEDNN, logging.DEBUG),  # the banner has no line break of its own
    ("W0000 00:00:1796563205.616899    9012 cpu_allocator_impl.cc:83] Allocation of 9 bytes",
     logging.WARNING),
    ("E1126 12:00:01.000001   12 op_kernel.cc:1828] OP_REQUIRES failed", logging.ERROR),
    # Ray's (lookalike import): a note on its own choices, at its error level
    ("[2026-12-06 16:21:20,389 E 7727 7727] core_worker.cc:2465: Actor with class name: "
     "'MapWorker(MapBatches(Encoding))' has constructor arguments in the object store",
     logging.DEBUG),
    # TensorFlow Lite's (the encoder's Lite form), in its plainer form
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", logging.DEBUG),
    ("ERROR: Failed to apply XNNPACK delegate.", logging.ERROR),
    ("13:20:03 INFO lookalike: encoder default.keras loaded in 6.7 s", None),
    ("INFO:root:a Python line", None),
    ("I like this picture", None),
])
def test_tensorflow_absl_and_ray_lines_are_told_from_others(line: str, level: int | None) -> None:
    assert level_of(line) == level


def test_native_lines_on_descriptor_2_leave_stderr_and_nothing_else_is_lost() -> None:
    """A real process: lines written to descriptor 2 itself, as TensorFlow's C++ writes them."""
    script = f"""
import logging, os, sys
from lookalike.daemon.logs import setup_logging
from lookalike.daemon import tensorflow_log
setup_logging(logging.INFO)
tensorflow_log.quiet()
os.write(2, {BANNER.encode()!r})
os.write(2, {(ONEDNN + chr(10)).encode()!r})
os.write(2, b"a line of some other library\\n")
logging.getLogger("absl").info("Using new converter")  # TensorFlow Lite's converter
logging.getLogger("absl").warning("a warning through absl")
logging.getLogger("lookalike").info("a line of ours")
print("on stdout")
raise SystemExit("the last words of a failure")
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False)
    assert finished.returncode == 1
    assert finished.stdout == "on stdout\n"
    lines = finished.stderr.splitlines()
    assert [line for line in lines if "oneDNN" in line or "absl::" in line
            or "converter" in line] == []
    assert any(line.endswith("WARNING absl: a warning through absl") for line in lines)
    assert "a line of some other library" in lines  # passed on, by the exit at the latest
    assert "the last words of a failure" in lines  # written at exit, past the filter
    assert any(line.endswith("INFO lookalike: a line of ours") for line in lines)
