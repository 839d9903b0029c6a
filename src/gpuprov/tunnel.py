"""A local port forwarded to the engine on the host (127.0.0.1:8000 there), kept alive and reconnecting.

Two transports: the system OpenSSH client (``ssh -N -L`` with ServerAliveInterval=5 × 3 and
ExitOnForwardFailure, so a dead link is noticed within about 15 s) when it exists, else paramiko. Either way
a supervisor thread restarts a dead link with backoff, and there is never a listener whose link is dead: with
OpenSSH the listener dies with its process; with paramiko each client connection opens its own channel and a
failure closes the client at once (the next request triggers a reconnect).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConnectError, UsageError
from .inventory import Host

log = logging.getLogger("gpuprov.tunnel")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pick_port(wanted: int, next_free: bool) -> int:
    if port_free(wanted):
        return wanted
    if not next_free:
        raise UsageError(f"local port {wanted} is already in use; pass --local-port N or --next-free")
    for p in range(wanted + 1, wanted + 200):
        if port_free(p):
            return p
    raise UsageError(f"no free local port in {wanted}..{wanted + 199}")


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Tunnel:
    host: Host
    local_port: int
    remote_port: int = 8000
    known_hosts_file: Path | None = None
    transport: str = "auto"  # auto | openssh | paramiko
    reconnects: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _proc: subprocess.Popen | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _runner: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: the host as the inventory describes it now (a RunPod pod: its address and port from the API, which change
    #: at every reset); called before each reconnect
    resolve: Callable[[], Host] | None = None
    _repin_due: bool = False
    _connected: bool = False

    def _refresh(self) -> None:
        """Before a reconnect: a pod may have reset (new port, new key): look it up again and, if it moved or
        restarted, connect once with gpuprov's own client, which re-pins a restarted pod's key for ``ssh``."""
        if self.resolve is None:
            return
        try:
            new = self.resolve()
        except Exception as e:  # noqa: BLE001 - the API may be down for a moment: keep the last known endpoint
            log.debug("%s: could not look the host up again: %s", self.host.name, e)
            return
        moved = ((new.address, new.port) != (self.host.address, self.host.port)
                 or new.var("runpod_started_at") != self.host.var("runpod_started_at"))
        self.host = new
        self._repin_due = self._repin_due or moved
        if self._repin_due:  # until one connection succeeds (sshd may not be up yet right after a reset)
            from .connection import SSHRunner, known_hosts

            try:
                SSHRunner(new, known_hosts()).connect().close()
                self._repin_due = False
            except ConnectError as e:
                log.debug("%s: %s", new.name, e)

    @property
    def kind(self) -> str:
        if self.transport == "auto":
            return "openssh" if shutil.which("ssh") else "paramiko"
        return self.transport

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/v1"

    # ----------------------------------------------------------- OpenSSH
    def ssh_argv(self) -> list[str]:
        h = self.host
        from .connection import ssh_config_for

        cfg = ssh_config_for(h.address)
        kh = [str(self.known_hosts_file)] if self.known_hosts_file else []
        kh.append(str(Path.home() / ".ssh" / "known_hosts"))
        argv = ["ssh", "-N", "-T", "-L", f"127.0.0.1:{self.local_port}:127.0.0.1:{self.remote_port}",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=yes",
                "-o", "UserKnownHostsFile=" + " ".join(kh), "-o", "LogLevel=ERROR"]
        if h.port or cfg.get("port"):
            argv += ["-p", str(h.port or cfg.get("port"))]
        if h.identity_file:
            argv += ["-i", h.identity_file, "-o", "IdentitiesOnly=yes"]
        if h.proxy_jump:
            argv += ["-J", h.proxy_jump]
        if h.var("host_key_alias"):  # a pod's key is pinned per pod ID, not per address and port
            argv += ["-o", f"HostKeyAlias={h.var('host_key_alias')}"]
        user = h.user or cfg.get("user")
        argv.append(f"{user}@{h.address}" if user else h.address)
        return argv

    def _run_openssh(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            if self.reconnects:
                self._refresh()
            self._proc = subprocess.Popen(self.ssh_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, start_new_session=True)
            if wait_listening(self.local_port, 15):
                self._ready.set()
            while self._proc.poll() is None and not self._stop.is_set():
                time.sleep(0.2)
            if self._stop.is_set():
                break
            self._ready.clear()
            self.reconnects += 1
            if time.monotonic() - started > 30:
                backoff = 1.0
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        self._kill_proc()

    def _kill_proc(self) -> None:
        p = self._proc
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # ----------------------------------------------------------- paramiko
    def _transport(self):  # noqa: ANN202
        with self._lock:
            r = self._runner
            try:
                if r is not None:
                    return r.transport  # type: ignore[attr-defined]
            except ConnectError:
                pass
            if r is not None:
                r.close()  # type: ignore[attr-defined]
            if self._connected:  # any reconnect: the host may have moved (a pod's reset)
                self.reconnects += 1
                self._refresh()
            from .connection import SSHRunner, known_hosts

            self._runner = SSHRunner(self.host, known_hosts()).connect()
            self._connected = True
            return self._runner.transport  # type: ignore[attr-defined]

    def _run_paramiko(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.local_port))
        srv.listen(64)
        srv.settimeout(0.5)
        self._listener = srv
        self._transport()
        self._ready.set()
        while not self._stop.is_set():
            try:
                client, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()
        srv.close()

    def _pump(self, client: socket.socket) -> None:
        chan = None
        for _attempt in range(2):
            try:
                chan = self._transport().open_channel("direct-tcpip", ("127.0.0.1", self.remote_port),
                                                      client.getpeername(), timeout=10)
                break
            except Exception:  # noqa: BLE001 - dead link: reconnect once, else close the client
                with self._lock:
                    if self._runner is not None:
                        self._runner.close()  # type: ignore[attr-defined]
                        self._runner = None
        if chan is None:
            client.close()
            return
        try:
            while True:
                r, _, _ = select.select([client, chan], [], [], 1.0)
                if self._stop.is_set():
                    break
                if client in r:
                    data = client.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in r:
                    data = chan.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            chan.close()
            client.close()

    # ----------------------------------------------------------- control
    def start(self, timeout: float = 20) -> Tunnel:
        target = self._run_openssh if self.kind == "openssh" else self._run_paramiko
        self._thread = threading.Thread(target=target, daemon=True, name=f"tunnel-{self.host.name}")
        self._thread.start()
        if not self._ready.wait(timeout):
            err = ""
            if self._proc is not None and self._proc.poll() is not None and self._proc.stderr:
                err = self._proc.stderr.read().decode(errors="replace").strip()
            self.stop()
            raise ConnectError(f"{self.host.name}: the tunnel did not come up within {timeout:g} s {err}".strip())
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._kill_proc()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(10)
        if self._runner is not None:
            self._runner.close()  # type: ignore[attr-defined]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else os.getpid()


# --------------------------------------------------------------------------- background tunnels (local processes)


@dataclass(frozen=True)
class Background:
    """A tunnel left running by ``invoke tunnel --background``: its pid file and log under ``.gpuprov/tunnels``."""

    host: str
    dir: Path

    @property
    def pidfile(self) -> Path:
        return self.dir / f"{self.host}.pid"

    @property
    def log(self) -> Path:
        return self.dir / f"{self.host}.log"

    def start(self, argv: list[str], timeout: float = 60.0) -> str:
        """Start ``argv`` (an ``invoke tunnel`` in the foreground) detached; return the base URL once it printed
        one. If it dies first, or prints nothing in time, it is stopped and the reason raised."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            offset = log.tell()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.pidfile.write_text(f"{p.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            text = self._log_since(offset)
            for line in text.splitlines():
                if "OPENAI_BASE_URL=" in line:
                    return line.split("OPENAI_BASE_URL=", 1)[1].split()[0]
            if p.poll() is not None or time.monotonic() > deadline:
                alive = p.poll() is None
                if alive:
                    os.kill(p.pid, 15)
                    p.wait(10)
                self.pidfile.unlink(missing_ok=True)
                lines = [x.strip() for x in text.splitlines() if x.strip()]
                why = lines[-1] if lines else f"it exited {p.returncode} without a word"
                if why.startswith("error: "):
                    why = why[len("error: "):]
                if alive:
                    why = f"no tunnel within {timeout:g} s" + (f" ({why})" if lines else "")
                raise ConnectError(f"{self.host}: the background tunnel did not come up: {why} (log {self.log})")
            time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self) -> str:
        """Stop it (only the process in our pid file, and only if it is still an ``invoke tunnel``)."""
        if not self.pidfile.is_file():
            return "no background tunnel"
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (ValueError, IndexError):
            self.pidfile.unlink()
            return "no background tunnel (the pid file was unreadable; removed it)"
        self.pidfile.unlink()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return "tunnel was not running"
        if b"tunnel" not in cmdline:
            return f"tunnel was not running (pid {pid} is another program now)"
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return "tunnel was not running"
        return "tunnel stopped"
