"""The participant under test as a process the kit starts, kills with SIGKILL and restarts.

The command line runs under /bin/sh in a session of its own; the kit signals that process group (its
own child's, by pid), never anything by name. Output goes to a log file whose tail a failure shows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO


class ParticipantProcess:
    def __init__(self, command: str, log_dir: str | None = None) -> None:
        self.command = command
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="saga-conformance-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / "participant.log"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        self._log = self.log_path.open("ab")
        self._log.write(f"--- saga-conformance: start {self.starts + 1}: {self.command}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            ["/bin/sh", "-c", self.command],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """SIGKILL to the whole process group: the crash no clean-up handler sees."""
        self._signal(signal.SIGKILL, wait=5.0)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if not self._signal(signal.SIGTERM, wait=grace):
            self.kill()
        self._close_log()

    def _signal(self, sig: signal.Signals, wait: float) -> bool:
        process = self._process
        if process is None:
            return True
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)  # the group of our own child, started with its own session
        deadline = time.monotonic() + wait
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # children left in the group
        return True

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
