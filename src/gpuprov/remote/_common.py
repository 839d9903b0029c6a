# gpuprov's host-side helpers, shared by every program in this folder (stdlib only, Python 3.8+).
# gpuprov.remote.source(NAME) puts this file in front of NAME.py, so each program that runs on a host - sent on
# stdin, or installed as a file (the supervisor, the weights fetcher) - uses the same pid, env-file and HTTP
# checks. Imports stay inside the functions: the state gatherer starts with `python3 -S` and pays for none.
import os
import sys


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
    import json

    st = {}
    try:
        with open(pidfile + ".state") as f:
            st = json.load(f)
    except (OSError, ValueError):
        pass
    return pid_alive(pidfile) is not None, st


SYSTEMD_PROPS = ("ActiveState,SubState,UnitFileState,NeedDaemonReload,MainPID,NRestarts,LoadState,"
                 "ActiveEnterTimestampMonotonic,ExecMainStatus")


def local_http(port, method="GET", path="/health", body=None, headers=None, timeout=3):
    """One HTTP/1.1 request to 127.0.0.1:PORT over a plain socket: (status, body bytes), or (None, reason). The
    engine's own address only; urllib would import http.client, email and ssl first (~0.1 s of CPU per program)."""
    import socket

    head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port, "Connection: close"]
    for k, v in (headers or {}).items():
        head.append("%s: %s" % (k, v))
    if body is not None:
        head.append("Content-Length: %d" % len(body))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return None, str(e)
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
