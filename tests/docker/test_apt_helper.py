"""scripts/lib/apt.sh on a Debian system that lacks the package: it installs it, a second call
changes nothing, a non-root caller is refused with the command to run, and a package apt cannot
install is named in the error.

The system is a container of the CPU trainer's base image (Debian bookworm minbase, empty package
lists: ``less`` and ``file`` are not in it) with scripts/lib mounted read-only, on the host network
(the engine has no bridge) so that apt reaches the Debian mirror.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
LIB = "/opt/brain-tumor-lib"
NOBODY = "65534:65534"
POLICY = "/usr/sbin/policy-rc.d"


def _sh(container, script: str, user: str = "root") -> tuple[int, str, str]:
    """Run bash SCRIPT with the helper sourced, as USER: (exit code, stdout, stderr)."""
    code, (out, err) = container.exec_run(
        ["bash", "-c", f"set -euo pipefail; source {LIB}/apt.sh; {script}", "apt-test"],
        user=user, demux=True)
    return code, (out or b"").decode(), (err or b"").decode()


def _status(container, package: str) -> str:
    """dpkg's status of PACKAGE ('' when dpkg does not know it)."""
    return _sh(container, f"dpkg-query -W -f='${{Status}}' {package} 2>/dev/null || true")[1]


@pytest.fixture
def debian(docker_client, cpu_base_image: str) -> Iterator:
    """A running container of the base image with the helper at LIB."""
    container = docker_client.containers.run(
        cpu_base_image, ["sleep", "infinity"], detach=True, network_mode="host",
        volumes={str(REPO / "scripts" / "lib"): {"bind": LIB, "mode": "ro"}})
    try:
        yield container
    finally:
        container.remove(force=True)


def test_installs_a_missing_package_and_then_does_nothing(debian) -> None:
    assert _status(debian, "less") != "install ok installed"
    assert _sh(debian, f"test -e {POLICY}")[0] != 0

    code, out, err = _sh(debian, "apt_install --no-services less")
    assert code == 0, err
    assert out == ""    # stdout stays the caller's
    assert "apt-test: apt-get update (package lists lack less)" in err
    assert "apt-test: installed less in " in err
    assert _status(debian, "less") == "install ok installed"
    assert _sh(debian, "less --version")[0] == 0
    assert _sh(debian, f"test -e {POLICY}")[0] != 0, "the policy-rc.d of the install was left"

    dpkg_log = _sh(debian, "cat /var/log/dpkg.log")[1]
    code, out, err = _sh(debian, "apt_install --no-services less")
    assert (code, out, err) == (0, "", "")
    assert _sh(debian, "cat /var/log/dpkg.log")[1] == dpkg_log
    # nothing to do needs no root either
    assert _sh(debian, "apt_install less", user=NOBODY) == (0, "", "")


def test_refuses_a_user_that_is_not_root(debian) -> None:
    code, out, err = _sh(debian, "apt_install file", user=NOBODY)
    assert code == 1
    assert out == ""
    assert "apt-test: error: not installed: file; this is not root (uid 65534)" in err
    assert "`sudo apt-get install -y --no-install-recommends file`" in err
    assert _status(debian, "file") != "install ok installed"


def test_names_a_package_apt_cannot_install(debian) -> None:
    code, out, err = _sh(debian, "apt_install less brain-tumor-no-such-package")
    assert code == 1
    assert out == ""
    assert "install of less brain-tumor-no-such-package failed; retrying" in err
    assert "error: apt-get install less brain-tumor-no-such-package failed" in err
    assert _status(debian, "less") != "install ok installed"
