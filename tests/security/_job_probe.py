"""A network for ``model.python`` that looks for the server's secrets wherever a job's code could.

Used by ``test_job_limits.py``: the job fails, naming what it found, if the job's process can read any of
the given values in its environment (``os.environ`` or the initial block in ``/proc/self/environ``).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


class SecretProbe(nn.Linear):
    def __init__(self, secrets: list[str]) -> None:
        environ = Path("/proc/self/environ").read_bytes()
        found = sorted({s[:8] for s in secrets if s.encode() in environ or any(s in v for v in os.environ.values())})
        if found:
            raise ValueError(f"the job can read {len(found)} secret(s) starting {found}")
        super().__init__(64, 10)
