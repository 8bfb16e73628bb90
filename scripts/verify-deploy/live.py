"""Running what the chart renders against the real server binary, for
verify.py: a test PKI, a server started from a rendered server.toml, and
the shell scripts of rendered containers run with the pod's mount paths
mapped to local directories.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(out: Path, dns_names: list[str]) -> Path:
    """A CA, a server certificate for dns_names and a client certificate
    (both X.509 v3, as rustls requires), as ca.crt, server.crt/key and
    client.crt/key in out."""
    if (out / "client.crt").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=" + ",".join(f"DNS:{n}" for n in dns_names) + "\n"
    )
    (out / "client.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        ["openssl", "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=verify-deploy CA"],
        ["openssl", "req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=durable-streams"],
        ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
        ["openssl", "req", *key, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=verify-deploy client"],
        ["openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.crt", "-days", "2", "-extfile", "client.ext"],
    ]
    for step in steps:
        result = subprocess.run(step, cwd=out, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:2])}: {result.stderr.strip()}")
    return out


def server_env(repo: Path, profile: str) -> dict[str, str]:
    """The environment without the caller's DS_* keys, with the repository's config/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_") and k != "RUST_LOG"}
    env["DS_CONFIG_DIR"] = str(repo / "config")
    env["DS_PROFILE"] = profile
    return env


def map_paths(text: str, mounts: dict[str, Path]) -> str:
    """Replaces each pod mount path by its local directory, longest first."""
    for mount in sorted(mounts, key=len, reverse=True):
        text = text.replace(mount, str(mounts[mount]))
    return text


class LiveServer:
    """The server binary serving a rendered server.toml on loopback ports:
    the API on `port`, probes and metrics in plain HTTP on `probe_port`."""

    def __init__(self, binary: Path, repo: Path, work: Path, config_text: str, profile: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.probe_port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.config = work / "server.toml"
        self.config.write_text(config_text)
        self.log = work / "server.log"
        self.env = server_env(repo, profile)
        self.env["DS_SERVER__BIND_ADDRESS"] = f"127.0.0.1:{self.port}"
        self.env["DS_OBSERVABILITY__METRICS__BIND_ADDRESS"] = f"127.0.0.1:{self.probe_port}"
        # No load balancer to wait for: stop at once.
        self.env["DS_SERVER__SHUTDOWN_DELAY_SECS"] = "0"
        self.env.update(env or {})
        self.binary = binary
        self.work = work
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LiveServer":
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config)],
                env=self.env, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except Exception:  # noqa: BLE001
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the server did not get ready: {self.log.read_text()[-1500:]}")
            time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_script(script: str, cwd: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    """A rendered container script, run by /bin/sh as the container would."""
    return subprocess.run(["/bin/sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def curl_shim(directory: Path, port: int) -> Path:
    """A `curl` that sends every connection to 127.0.0.1:port and keeps the
    URL's host name for TLS, as cluster DNS would reach the Service."""
    directory.mkdir(parents=True, exist_ok=True)
    real = next(p for p in ("/usr/bin/curl", "/usr/local/bin/curl", "/bin/curl") if Path(p).exists())
    shim = directory / "curl"
    shim.write_text(f'#!/bin/sh\nexec {real} --connect-to ::127.0.0.1:{port} "$@"\n')
    shim.chmod(0o755)
    return directory
