"""Airflow's ``[core] hostname_callable`` for the Celery test: one name per worker process.

Both Celery workers of the test run on this one machine, so the fully qualified host name alone
cannot say which of them ran a task. Each worker gets ``BT_WORKER_NAME`` in its environment and
reports ``<fqdn>/<name>`` as the task instance's ``hostname``; every other component (no
``BT_WORKER_NAME``) reports the plain FQDN, as Airflow does by default.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The FQDN, with ``/<BT_WORKER_NAME>`` appended when that is set."""
    name = os.environ.get("BT_WORKER_NAME", "")
    return f"{socket.getfqdn()}/{name}" if name else socket.getfqdn()
