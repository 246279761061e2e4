"""The job sandbox by itself: a forbidden path inside a granted tree stays out of reach, links included.

Each case applies a real policy in a fresh Python process (a sandbox is for good) and reports what it
could read; skipped where the kernel has no Landlock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.jobs import sandbox

ABI, WHY = sandbox.landlock_abi()

SCRIPT = """
import json, sys
from pathlib import Path
from modelport.jobs import sandbox
policy = sandbox.Policy(**json.loads(sys.argv[1]))
applied = sandbox.apply(policy)
seen = {}
for name in sys.argv[2:]:
    try:
        seen[name] = Path(name).read_text()
    except OSError as exc:
        seen[name] = type(exc).__name__
try:
    (Path(policy.workdir) / "tmp.txt").write_text("ok")
    seen["write workdir"] = "ok"
except OSError as exc:
    seen["write workdir"] = type(exc).__name__
print(json.dumps({"abi": applied.abi, "seen": seen}))
"""


def sandboxed_reads(policy: dict[str, object], *paths: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(policy), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.skipif(not ABI, reason=f"needs Landlock: {WHY}")
def test_a_forbidden_home_inside_a_granted_tree_is_carved_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    home = data / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "jobs" / "j1").mkdir(parents=True)
    (home / "secrets" / "master.key").write_text("KEY")
    (data / "train.csv").write_text("x,y")
    (data / "sub").mkdir()
    (data / "sub" / "more.csv").write_text("1,2")
    (data / "link-to-key").symlink_to(home / "secrets" / "master.key")
    policy = {
        "mode": "required",
        "workdir": str(home / "jobs" / "j1"),
        "read": [str(data)],
        "forbidden": [str(home)],
    }
    key, link = home / "secrets" / "master.key", data / "link-to-key"
    got = sandboxed_reads(policy, data / "train.csv", data / "sub" / "more.csv", key, link)
    assert got["abi"] == ABI
    assert got["seen"] == {
        str(data / "train.csv"): "x,y",  # the granted tree, around the home
        str(data / "sub" / "more.csv"): "1,2",
        str(key): "PermissionError",
        str(link): "PermissionError",  # a link is granted as what it points to: here, nothing
        "write workdir": "ok",
    }


@pytest.mark.skipif(not ABI, reason=f"needs Landlock: {WHY}")
def test_a_data_path_inside_the_home_is_never_granted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "jobs" / "j1").mkdir(parents=True)
    (home / "modelport.db").write_text("rows")
    policy = {"mode": "required", "workdir": str(home / "jobs" / "j1"), "read": [str(home)], "forbidden": [str(home)]}
    got = sandboxed_reads(policy, home / "modelport.db")
    assert got["seen"] == {str(home / "modelport.db"): "PermissionError", "write workdir": "ok"}


def test_the_seccomp_program_refuses_unix_sockets_and_io_uring() -> None:
    for machine in ("x86_64", "aarch64"):
        for parallel in (False, True):
            program = sandbox.seccomp_program(machine, tcp=parallel)
            assert len(program) < 32 and program[-3][3] == 0x7FFF0000  # returns: allow, EPERM, EACCES
            checked = {k for code, _, _, k in program if code == 0x15}
            assert {1, 17, 425} <= checked  # AF_UNIX, AF_PACKET, io_uring_setup
            assert ({2, 10} <= checked) is not parallel  # inet only for parallel jobs


def test_a_process_with_a_second_thread_is_refused_when_required() -> None:
    """Landlock and seccomp bind the calling thread: a thread started before would stay free."""
    script = (
        "import threading, time\n"
        "from modelport.jobs import sandbox\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "try:\n"
        "    sandbox.apply(sandbox.Policy(mode='required', workdir='/nonexistent'))\n"
        "except sandbox.SandboxError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "2 threads" in done.stdout


def test_off_applies_nothing() -> None:
    assert sandbox.apply(sandbox.Policy(mode="off", workdir="/nonexistent")) == sandbox.Applied(abi=0)
