# gpuprov's host-side helpers, shared by every program in this folder (stdlib only, Python 3.8+).
# gpuprov.remote.source(NAME) puts this file in front of NAME.py, so each program that runs on a host - sent on
# stdin, or installed as a file (the supervisor, the weights fetcher) - uses the same pid, env-file and HTTP
# checks. Imports stay inside the functions: the state gatherer starts with `python3 -S` and pays for none.
# JSON, signals, sockets and sha256 go through the C modules that json, signal, socket and hashlib are built on
# (with those as the fallback): the public modules import enum, re and OpenSSL first, which cost a provision's
# session ~50 ms of CPU on a small VM (python3 itself starts in ~15 ms there) - on each host, at every run.
import os
import sys


def to_json(o):
    """``o`` (dicts, lists, text, numbers, booleans, None) as JSON text, as json.dumps writes it."""
    try:
        from _json import encode_basestring_ascii as text
    except ImportError:
        import json

        return json.dumps(o)

    def enc(v):
        if isinstance(v, str):
            return text(v)
        if v is None or v is True or v is False:
            return {None: "null", True: "true", False: "false"}[v]
        if isinstance(v, int):
            return int.__repr__(v)
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
            return float.__repr__(v)
        if isinstance(v, dict):
            return "{" + ", ".join(key(k) + ": " + enc(x) for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(enc(x) for x in v) + "]"
        raise TypeError("Object of type %s is not JSON serializable" % type(v).__name__)

    def key(k):
        return text(k) if isinstance(k, str) else text(enc(k).strip('"'))

    return enc(o)


class _Decoding:
    strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def from_json(text):
    """JSON text as Python values, as json.loads reads it (ValueError when it is not JSON)."""
    try:
        from _json import make_scanner
    except ImportError:
        import json

        return json.loads(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\r":
        i += 1
    try:
        value, end = make_scanner(_Decoding())(text, i)
    except StopIteration:
        raise ValueError("not JSON: %r" % text[:80]) from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("not JSON: extra data after %d characters" % end)
    return value


def signals():
    """The signal functions (signal, alarm, SIGALRM, ...) without signal.py's enums."""
    try:
        import _signal

        return _signal
    except ImportError:
        import signal

        return signal


def sha256():
    """A new sha256 hash (hashlib's, without starting OpenSSL where CPython has its own)."""
    for name in ("_sha256", "_sha2"):
        try:
            return __import__(name).sha256()
        except (ImportError, AttributeError):
            pass
    import hashlib

    return hashlib.sha256()


def read_env(path):
    """KEY=value lines of a 0600 env file (comments and blank lines skipped, one pair of quotes stripped)."""
    env = {}
    if not path:
        return env
    try:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.lstrip().startswith("#") or "=" not in line:
                    continue
                k, v = line.split("=", 1)
                if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                    v = v[1:-1]
                env[k.strip()] = v
    except OSError:
        pass
    return env


def alive(pid):
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return not f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def start_ticks(pid):
    """When ``pid`` started (clock ticks after boot, /proc/PID/stat field 22): with the pid, names one process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_record(pid):
    """What a pid file holds: "PID STARTTICKS", so a pid left from before a container reset is not taken for the
    process that has that number now (on a pod that could be PID 1, or sshd)."""
    return "%d %s" % (pid, start_ticks(pid) or "")


def read_pid(pidfile):
    """The pid in ``pidfile`` while that very process runs (its start time matches), else None."""
    try:
        with open(pidfile) as f:
            words = f.read().split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(words) > 1 and start_ticks(pid) != words[1]:
        return None
    return pid


def pid_alive(pidfile):
    """The pid in ``pidfile`` when that process runs, else None."""
    pid = read_pid(pidfile)
    return pid if pid and alive(pid) else None


def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def supervisor_state(pidfile):
    """(alive, state) of gpuprov's supervisor: its pid file names a live process; pid.state is its JSON."""
    st = {}
    try:
        with open(pidfile + ".state") as f:
            st = from_json(f.read())
    except (OSError, ValueError):
        pass
    return pid_alive(pidfile) is not None, st


def which(name):
    """shutil.which for a command name: the first executable file of that name on PATH, else None."""
    if "/" in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        p = os.path.join(d or ".", name)
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None


def spawn(argv, timeout=20):
    """Run ``argv`` (stdin /dev/null) through posix_spawn with two pipes, cheaper to import than subprocess:
    (rc, stdout, stderr); rc 127 when it cannot start, 124 when it ran past ``timeout`` s (then killed)."""
    import select
    import time

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    acts = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=acts)
    except OSError as e:
        for fd in (out_r, out_w, err_r, err_w, null):
            os.close(fd)
        return 127, "", str(e)
    for fd in (out_w, err_w, null):
        os.close(fd)
    bufs = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    deadline = time.monotonic() + timeout
    timed_out = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)
            timed_out = True
            break
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                bufs[fd].append(data)
            else:
                open_fds.remove(fd)
                os.close(fd)
    for fd in open_fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)  # (3.8: no waitstatus_to_exitcode)
    out, err = b"".join(bufs[out_r]).decode("utf-8", "replace"), b"".join(bufs[err_r]).decode("utf-8", "replace")
    if timed_out:
        return 124, out, err + "\ntimed out after %ss" % timeout
    return rc, out, err


SYSTEMD_PROPS = ("ActiveState,SubState,UnitFileState,NeedDaemonReload,MainPID,NRestarts,LoadState,"
                 "ActiveEnterTimestampMonotonic,ExecMainStatus")


def local_http(port, method="GET", path="/health", body=None, headers=None, timeout=3):
    """One HTTP/1.1 request to 127.0.0.1:PORT over a plain socket: (status, body bytes), or (None, reason). The
    engine's own address only; urllib would import http.client, email and ssl first (~0.1 s of CPU per program)."""
    try:
        import _socket as socket
    except ImportError:
        import socket

    head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port, "Connection: close"]
    for k, v in (headers or {}).items():
        head.append("%s: %s" % (k, v))
    if body is not None:
        head.append("Content-Length: %d" % len(body))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return None, str(e)
    finally:
        s.close()
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, "not an HTTP answer"
    fields = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:]))
    try:
        return status, _http_body(fields, rest)
    except ValueError:
        return None, "a malformed HTTP answer"


def _http_body(fields, rest):
    if fields.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if not size:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return out
    if "content-length" in fields:
        return rest[:int(fields["content-length"])]
    return rest


def http_status(port, path="/health", timeout=3):
    """The HTTP status of http://127.0.0.1:PORT/PATH on this host, or None when nothing answers."""
    return local_http(port, "GET", path, timeout=timeout)[0]


# ---------------------------------------------------------------------------------------------- the program
