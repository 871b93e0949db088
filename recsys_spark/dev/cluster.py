"""A Spark standalone cluster on this machine: one master and N workers, each its own JVM.

For trying the spark-submit path of the jobs, and for the cluster tests, without a real cluster.
It uses only what ships in the pyspark package (``bin/spark-class`` with the standalone Master and
Worker classes: pip's pyspark has no ``sbin/start-master.sh``), binds to 127.0.0.1 only, and
stops exactly the processes it started. Executors are children of their worker JVM, in the
worker's process group, so stopping a worker's group stops its executors too.

    python -m recsys_spark.dev.cluster up   [--dir .cluster] [--workers 2] [--cores 1] [--memory 2g]
    python -m recsys_spark.dev.cluster down [--dir .cluster]
    python -m recsys_spark.dev.cluster status [--dir .cluster]

``up`` writes ``<dir>/cluster.json`` (master URL, ports, process ids) and ``<dir>/master-url``,
and the processes' logs to ``<dir>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_STATE = "cluster.json"
#: Seconds to wait for the master to see every worker (JVM start-up on a busy 2-core machine).
_START_TIMEOUT_S = 120.0
#: Seconds a stopped JVM gets to exit after SIGTERM before SIGKILL.
_STOP_GRACE_S = 10.0


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached."""


@dataclass
class ClusterState:
    """What ``up`` started: enough for ``down`` (in another process) to stop it."""

    master_url: str
    """spark://127.0.0.1:PORT, the value for ``spark-submit --master``."""
    master_ui: str
    """http://127.0.0.1:PORT of the master's web UI (its /json endpoint lists the workers)."""
    directory: str
    """Working folder: state file, logs, worker scratch space."""
    master_pid: int
    worker_pids: list[int] = field(default_factory=list)
    worker_uis: list[str] = field(default_factory=list)
    """Web UI addresses asked for (a worker moves to the next port if one was taken meanwhile)."""


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark package."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _environment(directory: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SPARK_HOME": str(spark_home()),
            # Spark otherwise advertises the first non-loopback interface
            "SPARK_LOCAL_IP": _HOST,
            "SPARK_LOCAL_HOSTNAME": "localhost",
            "SPARK_LOG_DIR": str(directory / "logs"),
            "SPARK_WORKER_DIR": str(directory / "work"),
            # executors start Python workers; without this they would pick whatever python3 is on PATH
            "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
            # the REST submission server would listen on a fixed port (6066) that two clusters share
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false " + env.get("SPARK_MASTER_OPTS", ""),
        }
    )
    return env


def _launch(name: str, args: list[str], directory: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it; a fresh log per start
    cmd = [str(spark_home() / "bin" / "spark-class"), *args]
    log.info("starting %s: %s", name, " ".join(cmd))
    # a session of its own: down() signals the whole group (the JVM and the executors it forks)
    return subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=directory,
        start_new_session=True,
    )


def get_json(url: str, timeout: float = 5.0) -> Any:
    """A JSON document from a loopback web UI (the master's status, a driver's REST API)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def master_status(master_ui: str, timeout: float = 5.0) -> dict:
    """The master's /json status: workers, their state and cores, running applications."""
    return get_json(f"{master_ui}/json/", timeout)


def _alive_workers(master_ui: str) -> int:
    try:
        status = master_status(master_ui)
    except (urllib.error.URLError, OSError, ValueError):
        return -1
    return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")


def start(
    directory: str | Path, workers: int = 2, cores: int = 1, memory: str = "2g", port: int = 7077
) -> ClusterState:
    """Start a master and ``workers`` workers and wait until the master sees them all.

    Args:
        directory: working folder for the state file, logs and worker scratch space.
        workers: worker JVMs; each runs its own executor per application.
        cores: cores each worker offers.
        memory: memory each worker offers to executors (a JVM size such as ``2g``).
        port: master port; 0, or a port already taken, picks a free one.
    """
    directory = Path(directory).resolve()
    if (directory / _STATE).exists():
        existing = load_state(directory)
        if _alive_workers(existing.master_ui) >= 0:
            raise ClusterError(
                f"a cluster from {directory} is already running at {existing.master_url}; "
                f"stop it first (python -m recsys_spark.dev.cluster down --dir {directory})"
            )
        (directory / _STATE).unlink()
    directory.mkdir(parents=True, exist_ok=True)
    env = _environment(directory)
    port = port if port and _port_is_free(port) else free_port()
    ui = free_port()
    master = _launch(
        "master",
        ["org.apache.spark.deploy.master.Master", "--host", _HOST, "--port", str(port), "--webui-port", str(ui)],
        directory,
        env,
    )
    procs = [master]
    try:
        # Spark moves to the next port when the chosen one was taken in the meantime: the log says
        # where the master really listens
        master_url, master_ui = _master_addresses(directory / "logs" / "master.log", master)
        state = ClusterState(master_url, master_ui, str(directory), master.pid)
        for i in range(workers):
            worker_ui = free_port()
            work = directory / "work" / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            proc = _launch(
                f"worker-{i}",
                [
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    _HOST,
                    "--webui-port",
                    str(worker_ui),
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(work),
                    state.master_url,
                ],
                directory,
                env,
            )
            procs.append(proc)
            state.worker_pids.append(proc.pid)
            state.worker_uis.append(f"http://{_HOST}:{worker_ui}")
        _write_state(directory, state)
        _wait_for_workers(state, procs, workers)
    except BaseException:
        _stop_pids([p.pid for p in procs])
        (directory / _STATE).unlink(missing_ok=True)
        raise
    log.info("local cluster up at %s with %d workers x %d cores", state.master_url, workers, cores)
    return state


_MASTER_URL = re.compile(r"Starting Spark master at (spark://\S+)")
_MASTER_UI = re.compile(r"Bound MasterWebUI to \S+, and started at http://[^:]+:(\d+)")


def _master_addresses(log_path: Path, master: subprocess.Popen[bytes]) -> tuple[str, str]:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise ClusterError(f"the master JVM exited during start-up (exit {master.returncode}); see {log_path}")
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        url, ui = _MASTER_URL.search(text), _MASTER_UI.search(text)
        if url and ui:
            return url.group(1), f"http://{_HOST}:{ui.group(1)}"
        time.sleep(0.3)
    raise ClusterError(f"the master did not start within {_START_TIMEOUT_S:.0f} s; see {log_path}")


def _wait_for_workers(state: ClusterState, procs: list[subprocess.Popen[bytes]], workers: int) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise ClusterError(
                f"a cluster JVM exited during start-up (exit {dead[0].returncode}); "
                f"see the logs in {state.directory}/logs"
            )
        if _alive_workers(state.master_ui) >= workers:
            return
        time.sleep(0.5)
    raise ClusterError(
        f"the master at {state.master_url} did not see {workers} workers within "
        f"{_START_TIMEOUT_S:.0f} s; see the logs in {state.directory}/logs"
    )


def _write_state(directory: Path, state: ClusterState) -> None:
    tmp = directory / f".{_STATE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(directory / _STATE)
    (directory / "master-url").write_text(state.master_url + "\n")


def load_state(directory: str | Path) -> ClusterState:
    path = Path(directory).resolve() / _STATE
    try:
        return ClusterState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ClusterError(f"no local cluster state in {path.parent} (was it started with 'up'?)") from None


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pid, sig)  # pid is its group's leader (start_new_session)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pid)
        return False


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_pids(pids: list[int]) -> None:
    # workers first: a master that goes first makes them log reconnection attempts while dying
    for pid in reversed(pids):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while time.monotonic() < deadline and any(_group_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):  # reap if it was our child
            os.waitpid(pid, os.WNOHANG)


def stop(directory: str | Path) -> bool:
    """Stop the cluster started from ``directory``; False when there was none."""
    directory = Path(directory).resolve()
    try:
        state = load_state(directory)
    except ClusterError:
        return False
    _stop_pids([state.master_pid, *state.worker_pids])
    (directory / _STATE).unlink(missing_ok=True)
    (directory / "master-url").unlink(missing_ok=True)
    log.info("local cluster at %s stopped", state.master_url)
    return True


def executor_pids(state: ClusterState, app_id: str | None = None, executor_id: str | None = None) -> list[int]:
    """Process ids of the executor JVMs running under this cluster's workers (optionally of one
    application, and one executor id within it)."""
    workers = set(state.worker_pids)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            pgid = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if pgid not in workers or b"org.apache.spark.executor.CoarseGrainedExecutorBackend" not in cmdline:
            continue
        if app_id is not None and app_id.encode() not in cmdline:
            continue
        if executor_id is not None and _argument(cmdline, b"--executor-id") != executor_id.encode():
            continue
        found.append(int(entry.name))
    return sorted(found)


def _argument(cmdline: list[bytes], flag: bytes) -> bytes | None:
    """The value after ``flag`` in a process's command line."""
    return cmdline[cmdline.index(flag) + 1] if flag in cmdline[:-1] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_spark.dev.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".cluster", help="working folder (state, logs, scratch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="executor memory each worker offers")
    parser.add_argument("--port", type=int, default=7077, help="master port (taken or 0: any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "up":
            state = start(args.dir, args.workers, args.cores, args.memory, args.port)
            print(
                f"master {state.master_url} (web UI {state.master_ui}), {args.workers} workers; "
                f"stop with: python -m recsys_spark.dev.cluster down --dir {args.dir}"
            )
        elif args.command == "down":
            print("stopped" if stop(args.dir) else f"no local cluster was running from {args.dir}")
        else:
            state = load_state(args.dir)
            status = master_status(state.master_ui)
            print(
                f"master {state.master_url}: {_alive_workers(state.master_ui)} workers alive, "
                f"{len(status.get('activeapps', []))} running applications"
            )
    except (ClusterError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
