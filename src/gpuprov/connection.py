"""Runners: how gpuprov executes argv lists on a host, over SSH or locally.

Every command is an argv list joined once with ``shlex.join``; nothing builds shell text by formatting.
Every call has a timeout. An SSH runner owns exactly one SSH connection; never share one across threads.

Host keys (see ``KnownHosts``): keys in ``~/.ssh/known_hosts`` and in the project's
``.gpuprov/known_hosts`` are trusted; an unknown key is pinned on first use into the project file
(unless ``strict``); a changed key is refused with the command that fixes it. A host with a ``host_key_alias``
var (OpenSSH's HostKeyAlias; a RunPod pod gets ``runpod-<pod id>``) is pinned under that name instead of its
address and port, which change when the pod resets. When such a pod's key changes and RunPod's API shows the pod
started again since the pin (``runpod_started_at`` moved), the new key is pinned in its place and one notice says
so; a changed key without a restart is refused like any other.

A host that answers commands with RunPod's proxy message ("Your SSH client doesn't support PTY") raises
``ProxyOnly`` with the one line that says what to connect to instead.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from . import settings
from .errors import AuthError, ConnectError, HostKeyMismatch, HostKeyUnknown, ProxyOnly, RemoteError, RemoteTimeout
from .inventory import Host, parse_adhoc
from .runpod import PROXY_FIX, is_proxy_address, proxy_refusal

log = logging.getLogger("gpuprov.connection")
#: one-line notices the user should see without -v (a re-pinned key); tasks.py prints them on stderr
notice = logging.getLogger("gpuprov.notice")
# paramiko's transport thread logs its own errors (with a traceback) on the "paramiko" logger; without a handler
# Python's last-resort handler prints them raw to stderr next to our one-line error. With -v they show in full.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
KEEPALIVE_S = 5


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> Result:
        if self.exit_status != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-5:])
            raise RemoteError(
                f"{shlex.join(self.argv)[:200]} exited {self.exit_status}" + (f": {tail}" if tail else ""),
                self.exit_status,
                self.stderr,
            )
        return self


class Stream(Protocol):
    """A long-running command whose output is read as it comes and whose stdin stays open (the host lock, logs -f)."""

    def recv(self, n: int, timeout: float) -> bytes | None:
        """Up to ``n`` bytes of output (stdout and stderr); b"" once it ended; None when ``timeout`` passed."""
        ...

    def send(self, data: bytes) -> None:
        """Write ``data`` to its stdin (the session's requests)."""
        ...

    def close(self) -> None:
        """Close stdin and stop reading (the command sees EOF; a lock holder lets go)."""
        ...


class Runner:
    """What every runner does, SSH or local: run a command, upload a file, open a stream, count execs, close."""

    host: Host
    exec_count: int = 0

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        raise NotImplementedError

    def put(self, data: bytes, path: str, *, mode: int = 0o644, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.run(put_argv(path, mode), stdin=data, timeout=timeout).check()

    def open_stream(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 10.0) -> Stream:
        """Start ``argv``, write ``stdin`` to it and keep its stdin open; read its output as it comes."""
        raise NotImplementedError

    def sftp_works(self, timeout: float = 5.0) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ChannelStream:
    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def recv(self, n: int, timeout: float) -> bytes | None:
        self.chan.settimeout(timeout)
        try:
            return self.chan.recv(n)
        except TimeoutError:
            return None

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectError(f"the channel closed: {e or type(e).__name__}") from None

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
            self.chan.close()
        except Exception:  # noqa: BLE001 - the connection may already be gone, which closes it too
            pass


class ProcessStream:
    def __init__(self, argv: Sequence[str], stdin: bytes = b"", env: Mapping[str, str] | None = None):
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        if stdin and self.proc.stdin:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()

    def recv(self, n: int, timeout: float) -> bytes | None:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return os.read(self.proc.stdout.fileno(), n) if ready else None

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as e:
            raise ConnectError(f"the local process ended: {e}") from None

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # our own child (by PID): a follower such as `tail -F` never ends alone
            self.proc.terminate()
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def _shown(cmd: str, limit: int = 300) -> str:
    """A command line for the -v log: one line, long inline programs cut short (secrets never travel in argv)."""
    flat = cmd.replace("\n", "\\n")
    return flat if len(flat) <= limit else f"{flat[:limit]}… ({len(flat)} chars)"


def put_argv(path: str, mode: int) -> list[str]:
    """The argv that writes stdin to ``path`` atomically with ``mode`` (no SFTP needed: works on RunPod)."""
    script = 'umask 077; t="$1.gpuprov-tmp.$$"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1"'
    return ["sh", "-c", script, "gpuprov-put", path, format(mode, "o")]


# --------------------------------------------------------------------------- host keys


class KnownHosts:
    """Trust on first use, pinned in a project-local known_hosts file; thread-safe."""

    _lock = threading.Lock()

    def __init__(self, path: Path, strict: bool = False, user_file: Path | None = None):
        self.path = path
        self.strict = strict
        self.user_file = user_file if user_file is not None else Path.home() / ".ssh" / "known_hosts"

    @staticmethod
    def key_name(address: str, port: int) -> str:
        return address if port == 22 else f"[{address}]:{port}"

    _cache: dict = {}

    def _entries(self) -> list:
        """All known_hosts entries, parsed once per file version (many hosts connect in parallel)."""
        out = []
        for f in (self.user_file, self.path):
            if not f or not f.is_file():
                continue
            st = f.stat()
            key = (str(f), st.st_mtime_ns, st.st_size)
            with self._lock:
                cached = KnownHosts._cache.get(key)
            if cached is None:
                keys = paramiko.HostKeys()
                try:
                    keys.load(str(f))
                except (OSError, paramiko.SSHException):
                    pass
                cached = keys._entries  # type: ignore[attr-defined]  # noqa: SLF001 - parsed once, shared
                with self._lock:
                    KnownHosts._cache = {k: v for k, v in KnownHosts._cache.items() if k[0] != str(f)}
                    KnownHosts._cache[key] = cached
            out.extend(cached)
        return out

    def load(self, name: str | None = None) -> paramiko.HostKeys:
        """The known keys, or only those that can match ``name`` (a plain or hashed entry) — fast lookups."""
        keys = paramiko.HostKeys()
        for e in self._entries():
            if name is None or name in e.hostnames or any(h.startswith("|1|") for h in e.hostnames):
                keys._entries.append(e)  # type: ignore[attr-defined]  # noqa: SLF001
        return keys

    def pin(self, name: str, key: paramiko.PKey, started_at: str | None = None, replace: bool = False) -> None:
        """Pin ``key`` for ``name`` (``replace``: instead of the keys pinned for it); ``started_at``: when the pod
        behind an alias last started, the fact a later re-pin is judged by."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = paramiko.HostKeys()
            if self.path.is_file():
                keys.load(str(self.path))
            if replace:  # every key pinned for it, not only the first
                keys._entries = [e for e in keys._entries  # type: ignore[attr-defined]  # noqa: SLF001
                                 if name not in e.hostnames]
            keys.add(name, key.get_name(), key)
            tmp = self.path.with_suffix(".tmp")
            keys.save(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            if started_at:
                starts = self._pod_starts()
                starts[name] = started_at
                _write_json(self.starts_file, starts)

    @property
    def starts_file(self) -> Path:
        """When each aliased pod had started at the time its key was pinned."""
        return self.path.with_name(self.path.name + ".starts.json")

    def _pod_starts(self) -> dict[str, str]:
        try:
            data = json.loads(self.starts_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def pinned_start(self, name: str) -> str | None:
        return self._pod_starts().get(name)

    def note_start(self, name: str, started_at: str) -> None:
        with self._lock:
            starts = self._pod_starts()
            starts[name] = started_at
            _write_json(self.starts_file, starts)

    def forget(self, address: str, port: int | None = 22) -> bool:
        """Remove a pinned key (the fix for a key that changed on purpose): ``address`` at ``port``, every port of
        ``address`` (``port`` None), or an alias (``port`` None)."""
        with self._lock:
            if not self.path.is_file():
                return False
            names = {self.key_name(address, port)} if port is not None else {address, f"[{address}]"}
            lines = self.path.read_text().splitlines()

            def match(ln: str) -> bool:
                first = ln.split(" ", 1)[0].split(",")[0]
                return first in names or (port is None and first.startswith(f"[{address}]:"))

            kept = [ln for ln in lines if not match(ln)]
            self.path.write_text("".join(x + "\n" for x in kept))
            starts = self._pod_starts()
            if any(n in starts for n in names):
                _write_json(self.starts_file, {k: v for k, v in starts.items() if k not in names})
            return len(kept) != len(lines)

    def policy(self, alias: str | None = None, started_at: str | None = None) -> paramiko.MissingHostKeyPolicy:
        outer = self

        class _Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):  # noqa: ANN001
                name = alias or hostname
                if outer.strict:
                    raise HostKeyUnknown(
                        f"host key of {name} is not known and strict host key checking is on; "
                        f"pin it first (connect once without --strict-host-keys) or add it to {outer.path}"
                    )
                outer.pin(name, key, started_at)

        return _Policy()

    def for_name(self, name: str, as_name: str) -> paramiko.HostKeys:
        """The keys pinned for ``name`` (an alias), presented as ``as_name`` (what paramiko compares)."""
        keys = paramiko.HostKeys()
        for e in self.load(name)._entries:  # type: ignore[attr-defined]  # noqa: SLF001
            if name in e.hostnames or _hashed_match(e.hostnames, name):
                keys.add(as_name, e.key.get_name(), e.key)
        return keys

    def mismatch_message(self, address: str, port: int, alias: str | None = None, host: str | None = None) -> str:
        name = alias or self.key_name(address, port)
        target = host or f"{address}{'' if port == 22 else f':{port}'}"
        return (
            f"the host key of {name} has CHANGED since it was pinned: this may be a different machine or an "
            f"attack, so gpuprov refuses to connect. If the host was rebuilt on purpose, forget the old key with "
            f"`invoke forget-host --host {target}` (or `ssh-keygen -R '{name}' -f {self.path}`) and connect again."
        )


def _later(a: str, b: str) -> bool:
    """Whether time ``a`` is after time ``b`` (RFC 3339, as RunPod's API writes them); unreadable: just different."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) > datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return a != b


def _hashed_match(hostnames: Sequence[str], name: str) -> bool:
    return any(h.startswith("|1|") and paramiko.HostKeys.hash_host(name, h) == h for h in hostnames)


def _write_json(path: Path, data: Mapping) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def known_hosts(strict: bool = False) -> KnownHosts:
    """The project's pinned host keys (``.gpuprov/known_hosts``); ``strict`` refuses keys not pinned yet."""
    return KnownHosts(settings.known_hosts_file(), strict=strict)


# --------------------------------------------------------------------------- SSH


class QuickAckSocket:
    """A TCP socket that acknowledges every segment at once (TCP_QUICKACK after each recv, TCP_NODELAY on).

    sshd leaves Nagle on for non-interactive sessions; paired with the kernel's delayed ACK that stalls an
    exchange by ~40 ms whenever the server has an unacknowledged small segment in flight (it happens right
    after authentication, when the server sends its host-keys notice). Quick ACKs remove the stall.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._quickack = getattr(socket, "TCP_QUICKACK", None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        if self._quickack is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                pass
        return data

    def __getattr__(self, name: str):  # send, sendall, settimeout, close, fileno, getpeername, ...
        return getattr(self._sock, name)



class _Repin(paramiko.MissingHostKeyPolicy):
    """The pod restarted since its key was pinned: pin the key it has now in the old one's place, and say so."""

    def __init__(self, kh: KnownHosts, alias: str, started: str | None, host: str):
        self.kh, self.alias, self.started, self.host = kh, alias, started, host

    def missing_host_key(self, client, hostname, key):  # noqa: ANN001
        self.kh.pin(self.alias, key, self.started, replace=True)
        notice.warning("%s: RunPod pod restarted (started %s), so its new host key was pinned for %s (%s %s)",
                       self.host, self.started, self.alias, key.get_name(), key.fingerprint)


class SSHRunner(Runner):
    """One paramiko SSH connection to one host; exec with stdin and timeouts; TCP_NODELAY and keepalive on."""

    def __init__(
        self,
        host: Host,
        known_hosts: KnownHosts | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ):
        self.host = host
        self.known_hosts = known_hosts or KnownHosts(settings.known_hosts_file())
        self.connect_timeout = connect_timeout
        self.exec_count = 0
        self._client: paramiko.SSHClient | None = None
        self._gateway: paramiko.SSHClient | None = None

    # ----------------------------------------------------------- connect
    def connect(self) -> SSHRunner:
        if self._client is not None:
            return self
        h = self.host
        cfg = ssh_config_for(h.address)
        address = cfg.get("hostname", h.address)
        port = h.port or int(cfg.get("port", 22))
        if is_proxy_address(address):
            raise ProxyOnly(f"{h.name}: {PROXY_FIX}")
        try:
            client = self._connect(address, port, cfg)
            self._note_start()
        except HostKeyMismatch:
            if not self._may_repin(address, port):
                raise
            client = self._connect(address, port, cfg, repin=True)
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        self._client = client
        return self

    def _may_repin(self, address: str, port: int) -> bool:
        """A pod's key changed: fine once RunPod's API shows the pod started again (later) since the last connection
        that saw the pinned key; never in strict mode."""
        alias, started = self.host.var("host_key_alias"), self.host.var("runpod_started_at")
        if not alias or not started or self.known_hosts.strict:
            return False
        before = self.known_hosts.pinned_start(str(alias))
        return bool(before) and _later(str(started), str(before))

    def _note_start(self) -> None:
        """The pinned key answered: remember when the pod had started, so that only a later restart may re-pin (a
        restart that kept its key must not leave an old start behind that any key change could then pass)."""
        alias, started = self.host.var("host_key_alias"), self.host.var("runpod_started_at")
        if alias and started and self.known_hosts.pinned_start(str(alias)) not in (None, str(started)):
            self.known_hosts.note_start(str(alias), str(started))

    def _connect(self, address: str, port: int, cfg: dict, repin: bool = False) -> paramiko.SSHClient:
        """One attempt, with ``cfg`` (``~/.ssh/config`` for the host, read once by ``connect``)."""
        h = self.host
        user = h.user or cfg.get("user") or "root"
        key_files = [h.identity_file] if h.identity_file else list(cfg.get("identityfile", []))
        key_files = [os.path.expanduser(k) for k in key_files if k]
        for k in key_files:
            if not os.path.isfile(k):
                raise AuthError(f"{h.name}: identity file {k} does not exist")
        sock = None
        jump = h.proxy_jump or cfg.get("proxyjump")
        if jump:
            sock = self._open_jump(jump, address, port)
        else:
            try:
                sock = QuickAckSocket(socket.create_connection((address, port), timeout=self.connect_timeout))
            except (TimeoutError, OSError) as e:
                reason = f"no answer within {self.connect_timeout:g} s" if isinstance(e, TimeoutError) else str(e)
                raise ConnectError(f"{h.name}: cannot reach {address}:{port}: {reason}") from None
        client = paramiko.SSHClient()
        alias = str(h.var("host_key_alias") or "") or None
        started = str(h.var("runpod_started_at") or "") or None
        real_name = KnownHosts.key_name(address, port)
        # only the entries that can match this host: paramiko would otherwise scan every pinned key; an aliased
        # host's keys are those pinned for its alias (none when a re-pin is due: the new key is pinned anew)
        client._host_keys = (  # type: ignore[attr-defined]
            paramiko.HostKeys() if repin else
            self.known_hosts.for_name(alias, real_name) if alias else self.known_hosts.load(real_name))
        policy = self.known_hosts.policy(alias, started)
        if repin:
            policy = _Repin(self.known_hosts, str(alias), started, h.name)
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                address,
                port=port,
                username=user,
                key_filename=key_files or None,  # type: ignore[arg-type]  # a list works (paramiko's docs)
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                sock=sock,  # type: ignore[arg-type]  # a QuickAckSocket or a jump host's channel
                allow_agent=not key_files,
                look_for_keys=not key_files,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise HostKeyMismatch(f"{h.name}: " + self.known_hosts.mismatch_message(address, port, alias, h.name)
                                  ) from None
        except HostKeyUnknown as e:
            client.close()
            raise HostKeyUnknown(f"{h.name}: {e}") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise AuthError(f"{h.name}: {user}@{address}:{port} refused our key ({e})") from None
        except (OSError, paramiko.SSHException, EOFError) as e:
            client.close()
            reason = str(e) or type(e).__name__
            if isinstance(e, (socket.timeout, TimeoutError)):
                reason = f"no answer within {self.connect_timeout:g} s"
            elif "protocol banner" in reason:
                reason = ("the port answers but is not an SSH server (no SSH banner): a wrong port, or sshd is "
                          "not up yet")
            raise ConnectError(f"{h.name}: cannot reach {address}:{port}: {reason}") from None
        return client

    def _open_jump(self, jump: str, address: str, port: int):  # noqa: ANN202
        jh = parse_adhoc(jump.split(",")[0])
        gw = SSHRunner(jh, self.known_hosts, self.connect_timeout).connect()
        self._gateway = gw._client
        assert self._gateway is not None
        t = self._gateway.get_transport()
        assert t is not None
        try:
            return t.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError) as e:
            raise ConnectError(f"{self.host.name}: jump host {jump} cannot reach {address}:{port}: {e}") from None

    @property
    def transport(self) -> paramiko.Transport:
        self.connect()
        assert self._client is not None
        t = self._client.get_transport()
        if t is None or not t.is_active():
            raise ConnectError(f"{self.host.name}: the SSH connection was lost")
        return t

    # ----------------------------------------------------------- exec
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        argv = tuple(str(a) for a in argv)
        cmd = shlex.join(argv)
        log.debug("%s $ %s", self.host.name, _shown(cmd))
        start = time.monotonic()
        try:
            chan = self.transport.open_session(timeout=min(timeout, self.connect_timeout))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectError(f"{self.host.name}: cannot open a session: {e or type(e).__name__}") from None
        self.exec_count += 1
        try:
            chan.settimeout(timeout)
            chan.exec_command(cmd)
            err_buf = io.BytesIO()
            err_thread = threading.Thread(target=_drain_stderr, args=(chan, err_buf), daemon=True)
            err_thread.start()
            if stdin is not None:
                _send_stdin(chan, stdin)
            if not chan.closed:
                chan.shutdown_write()
            out = _read_all(chan.recv, start + timeout)
            err_thread.join(max(0.0, start + timeout - time.monotonic()))
            if not chan.status_event.wait(max(0.0, start + timeout - time.monotonic())):
                raise TimeoutError()
            status = chan.recv_exit_status()
        except TimeoutError:
            chan.close()
            raise RemoteTimeout(f"{self.host.name}: {_shown(cmd, 120)} ran past {timeout:g} s") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            chan.close()
            raise ConnectError(f"{self.host.name}: connection lost during {_shown(cmd, 80)}: {e}") from None
        chan.close()
        res = Result(argv, status, out.decode("utf-8", "replace"), err_buf.getvalue().decode("utf-8", "replace"),
                     time.monotonic() - start)
        if status != 0:
            refused = proxy_refusal(self.host.name, res.stdout + res.stderr)
            if refused:
                raise ProxyOnly(refused)
        return res

    def open_stream(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 10.0) -> Stream:
        cmd = shlex.join(str(a) for a in argv)
        log.debug("%s $ %s (stream)", self.host.name, _shown(cmd))
        try:
            chan = self.transport.open_session(timeout=timeout)
            chan.set_combine_stderr(True)
            chan.exec_command(cmd)
            if stdin:
                _send_stdin(chan, stdin)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectError(f"{self.host.name}: cannot open a session: {e or type(e).__name__}") from None
        self.exec_count += 1
        return ChannelStream(chan)

    def sftp_works(self, timeout: float = 5.0) -> bool:
        try:
            chan = self.transport.open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.invoke_subsystem("sftp")
            chan.close()
            return True
        except (paramiko.SSHException, OSError, EOFError):
            return False

    def close(self) -> None:
        for c in (self._client, self._gateway):
            if c is not None:
                c.close()
        self._client = self._gateway = None


def _read_all(recv: Callable[[int], bytes], deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError()
        data = recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _send_stdin(chan: paramiko.Channel, data: bytes) -> None:
    """Write a command's stdin. A command may end without reading it all (a missing python3, RunPod's proxy
    refusing): the host then closes the channel mid-send, and its output and exit status are the answer, not a lost
    connection. A transport that really died fails the read that follows."""
    try:
        chan.sendall(data)
    except OSError:
        if not chan.closed and not chan.exit_status_ready():
            raise


def _drain_stderr(chan: paramiko.Channel, buf: io.BytesIO) -> None:
    try:
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                return
            buf.write(data)
    except (TimeoutError, OSError, EOFError, paramiko.SSHException):
        return


def ssh_config_for(alias: str) -> dict:
    path = Path.home() / ".ssh" / "config"
    if not path.is_file():
        return {}
    cfg = paramiko.SSHConfig.from_path(str(path))
    found = cfg.lookup(alias)
    return {k: v for k, v in found.items() if not (k == "hostname" and v == alias)}


def ssh_config_aliases() -> list[str]:
    path = Path.home() / ".ssh" / "config"
    if not path.is_file():
        return []
    try:
        return [h for h in paramiko.SSHConfig.from_path(str(path)).get_hostnames() if not any(c in h for c in "*?!")]
    except (OSError, paramiko.SSHException):
        return []


# --------------------------------------------------------------------------- local


def host_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command on this machine gets under ``--host local``: this machine's, without what belongs
    to gpuprov's own Python (PYTHONPATH, its venv on PATH, pip/uv settings) — an SSH session would not have those
    either, and uv would otherwise see gpuprov's packages as already installed in the engine's venv."""
    env = dict(os.environ if env is None else env)
    for k in list(env):
        if k.startswith(("PYTHON", "PIP_", "UV_", "CONDA")) or k in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
            del env[k]
    own_bin = os.path.join(sys.prefix, "bin")
    if sys.prefix != sys.base_prefix and "PATH" in env:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if os.path.realpath(p) != own_bin
                                      and p != own_bin)
    return env


class LocalRunner(Runner):
    """Runs on the machine you stand on (``--host local``), with that machine's environment (``host_environment``)."""

    def __init__(self, host: Host):
        self.host = host
        self.exec_count = 0
        self.env = host_environment()

    def connect(self) -> LocalRunner:
        return self

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        argv = tuple(str(a) for a in argv)
        log.debug("%s $ %s", self.host.name, _shown(shlex.join(argv)))
        start = time.monotonic()
        self.exec_count += 1
        try:
            p = subprocess.run(list(argv), input=stdin or b"", capture_output=True, timeout=timeout, check=False,
                               env=self.env)
        except subprocess.TimeoutExpired:
            raise RemoteTimeout(f"local: {shlex.join(argv)[:120]} ran past {timeout:g} s") from None
        except FileNotFoundError as e:
            return Result(argv, 127, "", str(e), time.monotonic() - start)
        return Result(
            argv, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"),
            time.monotonic() - start,
        )

    def open_stream(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 10.0) -> Stream:
        log.debug("%s $ %s (stream)", self.host.name, _shown(shlex.join(str(a) for a in argv)))
        self.exec_count += 1
        return ProcessStream([str(a) for a in argv], stdin, self.env)

    def sftp_works(self, timeout: float = 5.0) -> bool:
        return True

    def close(self) -> None:
        pass


def open_runner(host: Host, known_hosts: KnownHosts | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A connected runner for ``host``: local for ``address: local``, SSH otherwise."""
    if host.is_local:
        return LocalRunner(host)
    return SSHRunner(host, known_hosts, connect_timeout).connect()
