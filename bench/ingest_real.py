#!/usr/bin/env python
"""Benchmark: upload, ingest and split the real LGG export through a real S3 server.

Starts a private SeaweedFS server (``brain_tumor.devtools.embedded_s3.EmbeddedS3``) in a
temporary folder,
then times, each on its own:

1. ``upload``   - ``brain_tumor.ingest.exports.upload_export`` of the export: the archive as is (the
                  ingest downloads and extracts it), or with ``--as-folder`` the unpacked folder
                  (one object per file);
2. ``ingest``   - ``brain_tumor.steps.ingest(settings, [export_id])``;
3. ``reingest`` - the same ingest again, which must be a no-op returning the same version;
4. ``split``    - ``brain_tumor.steps.split(settings)``.

It prints the dataset counts (from the version's ``dataset.json``), the per-split figures, the wall
time of every phase, the ingest rate in slices/s, peak memory (this process and the server) and
the machine; ``--json OUT`` writes the same figures as JSON. The exit status is 0 when the counts
match the expected ones, nothing was quarantined and the re-ingest was a no-op; 1 otherwise.

The data is never copied into the repository: everything lands in a temporary folder (``--workdir``)
that is removed at the end (unless ``--keep``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import logging
import os
import platform
import pstats
import resource
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.ingest_real")

#: what /work/shared/data/README.md says the dev81 archive holds
EXPECTED = {"patients": 81, "slices": 2977, "tumor_slices": 1041, "quarantined": 0}
TARGET_INGEST_S = 60.0
ARCHIVE_ENDINGS = (".tar.gz", ".tar.xz", ".tgz", ".tar", ".zip")


# --------------------------------------------------------------------------- helpers
def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_base(start: int, avoid: int) -> int:
    """First base >= start (steps of 20) whose SeaweedFS ports (base..+6 and +10000..) are free."""
    for base in range(start, 55000, 20):
        ports = [base + i for i in range(7)] + [base + 10000 + i for i in range(7)]
        if avoid not in ports and all(_port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no free range of SeaweedFS ports from {start}")


def maxrss_mib(who: int) -> float:
    """Peak resident memory (MiB) of this process or of its waited-for children (Linux: KiB)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def proc_status_mib(pid: int, field: str) -> float | None:
    """A memory field (VmHWM, VmRSS) of a live process from /proc, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    """CPU count and model, memory, OS and Python of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu_model": model,
            "mem_total_gib": mem_gib, "os": platform.platform(),
            "python": platform.python_version(), "python_impl": platform.python_implementation(),
            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}


def weed_version() -> str:
    from brain_tumor.devtools.embedded_s3 import weed_binary

    try:
        out = subprocess.run([str(weed_binary()), "version"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
        return out.splitlines()[0].strip() if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dir_stats(root: Path) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    n = size = 0
    for p in root.rglob("*"):
        if p.is_file():
            n += 1
            size += p.stat().st_size
    return n, size


def find_export_folder(path: Path) -> Path:
    """The folder to upload: ``path`` itself, or its only ``kaggle_3m`` child."""
    if (path / "kaggle_3m").is_dir() and not any(path.glob("TCGA_*")):
        return path / "kaggle_3m"
    return path


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (from /proc/<pid>/stat)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine spent busy so far (from /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Times phases: wall, this process's CPU, the server's CPU, other processes' CPU, peak RSS.

    ``other_cpu_s`` is the machine's busy CPU time minus this process's and the server's: work of
    unrelated processes (tests, training) that competed for the cores; when it is not near 0 the
    wall times are inflated.
    """

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures
        self.server_pid: int | None = None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("phase %s ...", name)
        pid = self.server_pid
        t0, c0, s0, b0 = (time.perf_counter(), time.process_time(), proc_cpu_s(pid),
                          machine_busy_s())
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            s1, b1 = proc_cpu_s(pid), machine_busy_s()
            server_cpu = round(s1 - s0, 2) if s0 is not None and s1 is not None else None
            other = None
            if b0 is not None and b1 is not None:
                other = round(max(0.0, (b1 - b0) - cpu - (server_cpu or 0.0)), 2)
            self.figures["phases"][name] = {
                "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "server_cpu_s": server_cpu,
                "other_cpu_s": other, "maxrss_self_mib_after": maxrss_mib(resource.RUSAGE_SELF)}
            log.info("phase %s: %.2f s wall, %.2f s CPU here, %s s in the server, %s s in other "
                     "processes", name, wall, cpu, server_cpu, other)


# --------------------------------------------------------------------------- breakdown
class Breakdown:
    """Sums the time spent in chosen brain_tumor functions, across threads (monkeypatching).

    Only for ``--breakdown``: it wraps functions of the imported modules for this process and
    restores them afterwards; nothing on disk changes.
    """

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()
        self.patched: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                with self.lock:
                    self.total[label] += t1 - t0
                    self.calls[label] += 1
                    self.first.setdefault(label, t0)
                    self.last[label] = t1

        setattr(owner, attr, timed)
        self.patched.append((owner, attr, original))

    def install(self) -> None:
        from brain_tumor.ingest import exports
        from brain_tumor.ingest import run as ingest
        from brain_tumor.store import datasets, storage

        self.wrap(ingest, "open_export", "open_export (download+hash+extract / list)")
        self.wrap(storage.ObjectStore, "download_file", "  S3 download_file (archive)")
        self.wrap(exports, "_extract", "  extract archive")
        self.wrap(ingest, "pair_files", "pair_files")
        self.wrap(ingest._Worker, "__call__", "worker per pair (threads, summed)")
        self.wrap(storage.ObjectStore, "get", "  S3 get (threads)")
        self.wrap(ingest, "check_slice", "  decode + relabel (threads)")
        self.wrap(storage.ObjectStore, "put_new", "  S3 put_new (blobs, + 2 JSON)")
        self.wrap(ingest, "enforce_sizes", "enforce_sizes")
        self.wrap(ingest, "merge_manifest", "merge_manifest")
        self.wrap(ingest, "version_id", "version_id")
        self.wrap(datasets.DatasetStore, "commit", "commit version")
        self.wrap(datasets.DatasetStore, "ledger", "read ledger")

    def restore(self) -> None:
        for owner, attr, original in reversed(self.patched):
            setattr(owner, attr, original)
        self.patched.clear()

    def report(self) -> dict[str, dict[str, float]]:
        """Per function: summed seconds, calls, and span (first call's start to last's end)."""
        return {k: {"s": round(v, 3), "calls": self.calls[k],
                    "span_s": round(self.last[k] - self.first[k], 3)}
                for k, v in self.total.items()}


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from brain_tumor import steps
    from brain_tumor.devtools.embedded_s3 import EmbeddedS3
    from brain_tumor.ingest.exports import upload_export
    from brain_tumor.settings import load_settings
    from brain_tumor.store.datasets import DatasetStore, code_version

    data = Path(args.data).expanduser().resolve()
    if not data.exists():
        raise SystemExit(f"error: no such file or folder: {data}")
    is_archive = data.is_file()
    if is_archive and not data.name.lower().endswith(ARCHIVE_ENDINGS):
        raise SystemExit(f"error: {data} is neither a folder nor an archive {ARCHIVE_ENDINGS}")
    mode = "folder" if (args.as_folder or not is_archive) else "archive"

    figures: dict[str, Any] = {
        "benchmark": "ingest_real", "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(data), "mode": mode, "code_version": code_version(),
        "machine": machine(), "phases": {}, "checks": {},
    }
    tmp_ctx = tempfile.TemporaryDirectory(prefix="brain-tumor-bench-", dir=args.workdir)
    tmp = Path(tmp_ctx.name)
    if args.keep:
        tmp_ctx._finalizer.detach()  # type: ignore[attr-defined]  # keep the folder
    log.info("work folder %s", tmp)
    port = args.port or free_port()
    server = EmbeddedS3(data_dir=tmp / "s3", port=port,
                        port_base=free_port_base(args.port_base, port))
    server_pid = None
    phase = Phases(figures)
    breakdown = Breakdown() if args.breakdown else None
    try:
        # --- what to upload
        if mode == "folder" and is_archive:
            with phase("unpack (not part of the pipeline)"):
                dest = tmp / "unpacked"
                dest.mkdir()
                with tarfile.open(data) as tf:
                    tf.extractall(dest, filter="data")
            source = find_export_folder(dest)
        elif mode == "folder":
            source = find_export_folder(data)
        else:
            source = data
        if source.is_dir():
            n_files, n_bytes = dir_stats(source)
        else:
            n_files, n_bytes = 1, source.stat().st_size
        figures["upload_source"] = {"path": str(source), "files": n_files,
                                    "mib": round(n_bytes / 2**20, 1)}

        with phase("server start"):
            server.start()
        server_pid = phase.server_pid = server.pid()
        settings = load_settings(env={}, s3_endpoint_url=server.endpoint, s3_bucket=server.bucket,
                                 home=tmp / "home", io_workers=args.io_workers)
        figures["server"] = {"endpoint": server.endpoint, "port_base": server.port_base,
                             "pid": server_pid, "weed": weed_version()}
        figures["settings"] = {"io_workers": settings.io_workers}
        store = steps.open_store(settings)

        # --- (a) upload
        with phase("upload"):
            export_id = upload_export(store, settings, source, args.export_id,
                                      progress=args.progress)
        figures["export_id"] = export_id
        up = figures["phases"]["upload"]
        up["mib_per_s"] = round(n_bytes / 2**20 / up["wall_s"], 1)
        up["files"] = n_files

        # --- (b) ingest
        profiler = cProfile.Profile() if args.profile else None
        if breakdown:
            breakdown.install()
        try:
            with phase("ingest"):
                if profiler:
                    profiler.enable()
                first = steps.ingest(settings, [export_id], progress=args.progress)
                if profiler:
                    profiler.disable()
        finally:
            if breakdown:
                breakdown.restore()
        version = first["dataset_version"]
        res = first["exports"][0]
        ing = figures["phases"]["ingest"]
        ing["slices_per_s"] = round(res["slices"] / ing["wall_s"], 1)
        ing["under_target"] = ing["wall_s"] < TARGET_INGEST_S
        figures["ingest_result"] = {k: v for k, v in res.items() if k != "quarantine"}
        figures["quarantine"] = res["quarantine"][: args.max_quarantine_shown]
        if breakdown:
            figures["ingest_breakdown"] = breakdown.report()
        if profiler:
            profiler.dump_stats(args.profile)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            figures["profile_file"] = str(args.profile)
            log.info("cProfile (main thread only) of the ingest, top 30 cumulative:\n%s",
                     text.getvalue())

        # --- the dataset record
        record = DatasetStore(store, settings).record(version)
        figures["dataset_version"] = version
        figures["counts"] = record["counts"]

        # --- (b') second ingest of the same export: must be a no-op
        with phase("reingest"):
            second = steps.ingest(settings, [export_id])
        again = second["exports"][0]
        figures["reingest"] = {"dataset_version": second["dataset_version"],
                               "already_ingested": again["already_ingested"]}

        # --- (c) split
        with phase("split"):
            split = steps.split(settings)
        figures["splits"] = {
            r["split"]: {"patients": int(r["patients"]), "slices": int(r["slices"]),
                         "tumor_slices": int(r["tumor_slices"])}
            for r in split["splits"]}
        figures["split_written"] = split["written"]
        if server_pid:
            figures["server"]["vmhwm_mib"] = proc_status_mib(server_pid, "VmHWM")
            figures["server"]["vmrss_mib_end"] = proc_status_mib(server_pid, "VmRSS")
            figures["server"]["cpu_s_total"] = proc_cpu_s(server_pid)
    finally:
        with phase("server stop"):
            server.stop()
        if not args.keep:
            tmp_ctx.cleanup()
    figures["memory"] = {
        "maxrss_self_mib": maxrss_mib(resource.RUSAGE_SELF),
        # the server is this process's only child; stop() reaps it, so it counts here
        "maxrss_children_mib": maxrss_mib(resource.RUSAGE_CHILDREN),
        "server_vmhwm_mib": figures.get("server", {}).get("vmhwm_mib"),
    }
    figures["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    figures["checks"] = checks(figures, args)
    return figures


def checks(fig: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    """What must hold: expected counts, nothing quarantined, re-ingest a no-op, splits add up."""
    out: dict[str, bool] = {}
    counts = fig.get("counts", {})
    if not args.no_expect:
        expected = {"patients": args.expect_patients, "slices": args.expect_slices,
                    "tumor_slices": args.expect_tumor_slices}
        for k, v in expected.items():
            out[f"{k} == {v}"] = counts.get(k) == v
    out["quarantined == 0"] = counts.get("quarantined") == 0
    again = fig.get("reingest", {})
    out["reingest is a no-op (same version, already_ingested)"] = bool(
        again.get("already_ingested")
        and again.get("dataset_version") == fig.get("dataset_version"))
    splits = fig.get("splits", {})
    for k in ("patients", "slices", "tumor_slices"):
        out[f"splits add up to {k}"] = sum(s[k] for s in splits.values()) == counts.get(k)
    out["every split has tumor slices"] = all(s["tumor_slices"] > 0 for s in splits.values())
    return out


def render(fig: dict[str, Any]) -> str:
    """The figures as text for people."""
    m, ph = fig["machine"], fig["phases"]
    lines = [
        f"ingest_real  {fig['date_utc']}  brain-tumor {fig['code_version']}  mode={fig['mode']}",
        f"machine      {m['cpu_count']} CPU(s) ({m['cpus_usable']} usable), {m['cpu_model']}, "
        f"{m['mem_total_gib']} GiB RAM, Python {m['python']}, {m['os']}",
        f"load         1/5/15-min load average {m['loadavg_at_start']} at start, "
        f"{m.get('loadavg_at_end')} at end (other work on the machine inflates wall times)",
        f"server       SeaweedFS {fig.get('server', {}).get('weed', '?')} at "
        f"{fig.get('server', {}).get('endpoint', '?')}, io_workers="
        f"{fig.get('settings', {}).get('io_workers')}",
        f"data         {fig['data']}",
        f"upload from  {fig.get('upload_source', {}).get('path')} "
        f"({fig.get('upload_source', {}).get('files')} file(s), "
        f"{fig.get('upload_source', {}).get('mib')} MiB) as export {fig.get('export_id')}",
        "",
        f"dataset      {fig.get('dataset_version')}",
    ]
    c = fig.get("counts", {})
    lines.append(f"counts       patients {c.get('patients')}, slices {c.get('slices')}, "
                 f"tumor slices {c.get('tumor_slices')}, quarantined {c.get('quarantined')}, "
                 f"changed {c.get('changed')}")
    r = fig.get("ingest_result", {})
    lines.append(f"ingest       files {r.get('files')}, pairs {r.get('slices')}, accepted "
                 f"{r.get('accepted')}, quarantined {r.get('quarantined')}, added {r.get('added')}")
    for q in fig.get("quarantine", []):
        lines.append(f"  quarantined {q['path']}: {q['reason']} ({q['detail']})")
    lines.append("")
    lines.append(f"{'split':8}{'patients':>10}{'slices':>10}{'tumor':>10}")
    for name, s in fig.get("splits", {}).items():
        lines.append(f"{name:8}{s['patients']:>10}{s['slices']:>10}{s['tumor_slices']:>10}")
    lines.append("")
    lines.append(f"{'phase':34}{'wall s':>9}{'CPU s':>9}{'srv CPU':>9}{'other':>9}{'RSS MiB':>9}"
                 "  (CPU s: this process; srv: SeaweedFS; other: other processes)")
    for name, p in ph.items():
        extra = ""
        if name == "ingest":
            verdict = "under" if p["under_target"] else "OVER"
            extra = (f"  {p['slices_per_s']} slices/s, "
                     f"{verdict} the {TARGET_INGEST_S:.0f} s target")
        elif name == "upload":
            extra = f"  {p['mib_per_s']} MiB/s, {p['files']} file(s)"
        srv = "" if p["server_cpu_s"] is None else f"{p['server_cpu_s']:.2f}"
        other = "" if p["other_cpu_s"] is None else f"{p['other_cpu_s']:.2f}"
        lines.append(f"{name:34}{p['wall_s']:>9.2f}{p['cpu_s']:>9.2f}{srv:>9}{other:>9}"
                     f"{p['maxrss_self_mib_after']:>9.0f}{extra}")
    re = fig.get("reingest", {})
    lines.append(f"reingest     version {re.get('dataset_version')}, already_ingested "
                 f"{re.get('already_ingested')}")
    if fig.get("ingest_breakdown"):
        lines.append("")
        lines.append("ingest breakdown (s: time inside each function, summed over threads, so it "
                     "can exceed the wall time; span: first call's start to last call's end):")
        for k, v in fig["ingest_breakdown"].items():
            lines.append(f"  {k:46}{v['s']:>9.2f} s {v['calls']:>6} call(s)  span "
                         f"{v['span_s']:>7.2f} s")
    mem = fig["memory"]
    lines.append("")
    lines.append(f"peak memory  this process {mem['maxrss_self_mib']} MiB (RUSAGE_SELF maxrss); "
                 f"server {mem['maxrss_children_mib']} MiB (RUSAGE_CHILDREN maxrss), VmHWM "
                 f"{mem['server_vmhwm_mib']} MiB")
    lines.append("")
    for k, ok in fig["checks"].items():
        lines.append(f"check        {'ok  ' if ok else 'FAIL'} {k}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/ingest_real.py",
        description="Upload, ingest and split the real LGG export (kaggle_3m) through a private "
                    "SeaweedFS server, timing each phase; print counts, per-split figures, wall "
                    "times, slices/s, peak memory and the machine.",
        epilog="Example: .venv/bin/python bench/ingest_real.py "
               "/work/shared/data/lgg-kaggle_3m-dev81.tar.xz [--as-folder] [--json out.json]. "
               "Exit status 1 when a check fails (counts differ from the expected ones, "
               "something was quarantined, the re-ingest was not a no-op).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", help="the export: an archive (.tar.xz, .tar.gz, .tgz, .tar, .zip) or an "
                                "unpacked kaggle_3m folder (or a folder holding kaggle_3m/)")
    p.add_argument("--as-folder", action="store_true",
                   help="with an archive: unpack it first (timed apart, not part of the pipeline) "
                        "and upload the folder, one object per file; a folder is always uploaded "
                        "as a folder")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    p.add_argument("--export-id", help="export id; default: the archive or folder name")
    p.add_argument("--io-workers", type=int, default=8,
                   help="settings.io_workers: threads for S3 reads and writes")
    p.add_argument("--workdir", help="parent of the temporary folder (server data, unpacked "
                                     "export); default: the system temp folder ($TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--port", type=int, default=0, help="S3 port (0: a free one)")
    p.add_argument("--port-base", type=int, default=31000,
                   help="search for SeaweedFS's internal ports from here")
    p.add_argument("--breakdown", action="store_true",
                   help="time the ingest's inner functions (download, extract, decode, S3 puts, "
                        "commit) by wrapping them in this process; adds a little overhead")
    p.add_argument("--profile", metavar="OUT.prof",
                   help="run the first ingest under cProfile (main thread only) and dump stats")
    p.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    p.add_argument("--expect-patients", type=int, default=EXPECTED["patients"],
                   help="patients the dataset must hold (the dev81 archive's)")
    p.add_argument("--expect-slices", type=int, default=EXPECTED["slices"],
                   help="slices the dataset must hold")
    p.add_argument("--expect-tumor-slices", type=int, default=EXPECTED["tumor_slices"],
                   help="slices with a tumor pixel the dataset must hold")
    p.add_argument("--no-expect", action="store_true",
                   help="do not check the counts (for another data set); quarantined must "
                        "still be 0")
    p.add_argument("--max-quarantine-shown", type=int, default=20,
                   help="quarantined files listed in the output")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: brain_tumor INFO logs, -vv: DEBUG")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levels = {0: logging.WARNING, 1: logging.INFO}
    logging.getLogger("brain_tumor").setLevel(levels.get(args.verbose, logging.DEBUG))
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    figures = run(args)
    print(render(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
        log.info("figures written to %s", args.json)
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
