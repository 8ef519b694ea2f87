"""The tools setup runs (cmake and the compilers under it, pip) end with setup: on SIGTERM, Ctrl-C or a failure
they were left running, the setup lock released under them, so the next `council setup` built in the same folder
at the same time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def owned(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`cmd` started in a session of its own, so everything it starts is one process group; if the block does not
    end normally (an exception, the KeyboardInterrupt of Ctrl-C or SIGTERM), the whole group is killed and reaped
    before the exception goes on."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    try:
        yield proc
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
