"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

OUT = Path(__file__).parent / "out"


def ensure_debian_package(package: str, probe: Path) -> None:
    """Install a Debian data package when its files are missing (needs root, as on the project machines)."""
    if probe.exists():
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"{probe} is missing: install the Debian package {package}")
    print(f"installing Debian package {package} ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def write_dataset(folder: Path, df: pd.DataFrame, spec: dict) -> Path:
    """Write a table + dataset.yaml in the cpfd contract format."""
    folder.mkdir(parents=True, exist_ok=True)
    df.to_parquet(folder / "data.parquet", index=False)
    (folder / "dataset.yaml").write_text(yaml.safe_dump({"format": 1, "table": "data.parquet", **spec}, sort_keys=False))
    return folder


def start_server(bundle: Path, *args: str, stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """``cpfd serve`` on a free loopback port, returned once /healthz answers: (process, base URL)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cpfd", "serve", str(bundle), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, base


def run_cpfd(cmd: list[str], sets: list[str]) -> float:
    """Run a ``cpfd`` command in-process with ``--set`` overrides, printing it first; returns the wall time."""
    from cpfd.cli import app

    cmd = [*cmd, *[arg for item in sets for arg in ("--set", item)]]
    print(f"$ cpfd {' '.join(cmd)}", flush=True)
    tic = time.perf_counter()
    try:
        app(cmd, standalone_mode=False)
    finally:
        print(f"wall time {time.perf_counter() - tic:.0f} s", flush=True)
    return time.perf_counter() - tic
