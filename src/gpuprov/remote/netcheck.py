# The multinode preflight's probes on one node (gpuprov.multinode.preflight), before anything is installed:
#   addrs                      the node's IPv4 addresses by interface (`ip` when there is one, else ioctl)
#   route PEER                 the interface and source address this node uses toward PEER (`ip route get`, else
#                              a UDP connect, which sends nothing)
#   listen PORT SECONDS TOKEN N  a throwaway listener (detached; it answers TOKEN to each connection and exits
#                              after N of them, or at its deadline): {"port": bound port, "pid"} or {"error": "in use"}
#   stop PID                   end such a listener early (only if PID is one)
#   connect ADDR PORT TOKEN S  {"ok": true} or {"error": "timed out" | "refused" | "no route" | "bad answer"}
# Argument: a JSON list of [action, args...]; prints a JSON list of answers, in order.
import errno
import json
import shutil
import socket
import subprocess
import time


def addrs():
    out = []
    if shutil.which("ip"):
        p = subprocess.run(["ip", "-4", "-o", "addr", "show"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for line in p.stdout.decode().splitlines():
            f = line.split()
            if len(f) > 3 and f[2] == "inet":
                out.append({"iface": f[1].split("@")[0], "addr": f[3].split("/")[0]})
        return out
    import fcntl
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _, name in socket.if_nameindex():
        try:
            raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
        except OSError:
            continue
        out.append({"iface": name, "addr": socket.inet_ntoa(raw[20:24])})
    s.close()
    return out


def route(peer):
    if shutil.which("ip"):
        p = subprocess.run(["ip", "-4", "-o", "route", "get", peer], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode:
            return {"error": p.stderr.decode().strip() or "no route"}
        f = p.stdout.decode().split()
        got = {k: f[f.index(k) + 1] for k in ("dev", "src", "via") if k in f[:-1]}
        return {"iface": got.get("dev"), "addr": got.get("src"), "via": got.get("via")}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((peer, 9))
        src = s.getsockname()[0]
    except OSError as e:
        return {"error": e.strerror or str(e)}
    finally:
        s.close()
    iface = next((a["iface"] for a in addrs() if a["addr"] == src), None)
    return {"iface": iface, "addr": src, "via": None}


def listen(port, seconds, token, expect=1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", int(port)))
    except OSError as e:
        return {"error": "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))}
    s.listen(16)
    bound = s.getsockname()[1]
    pid = os.fork()
    if pid:
        s.close()
        return {"port": bound, "pid": pid}
    # the listener: detached from the SSH session, gone at its deadline
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    deadline = time.monotonic() + float(seconds)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os._exit(0)
        s.settimeout(left)
        try:
            c, _ = s.accept()
        except (socket.timeout, OSError):
            continue
        try:
            c.sendall(token.encode())
            expect -= 1
        except OSError:
            pass
        c.close()
        if expect <= 0:
            os._exit(0)


def stop(pid):
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as f:
            if b"gpuprov-remote" not in f.read():
                return {"error": "not a listener"}
        os.kill(int(pid), 15)
    except (OSError, ValueError):
        return {"ok": True, "gone": True}
    return {"ok": True}


def connect(addr, port, token, timeout):
    t = time.monotonic()
    try:
        c = socket.create_connection((addr, int(port)), timeout=float(timeout))
    except OSError as e:
        if isinstance(e, socket.timeout) or e.errno == errno.ETIMEDOUT or str(e) == "timed out":
            return {"error": "timed out after %g s" % float(timeout)}
        if isinstance(e, ConnectionRefusedError):
            return {"error": "refused"}
        return {"error": "no route" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else (e.strerror or str(e))}
    try:
        if not token:  # the port is already held by the deployment's own engine: being accepted is enough
            return {"ok": True, "ms": round((time.monotonic() - t) * 1000, 1)}
        c.settimeout(float(timeout))
        got = b""
        while len(got) < len(token):
            part = c.recv(len(token) - len(got))
            if not part:
                break
            got += part
        if got.decode("utf-8", "replace") != token:
            return {"error": "bad answer (another program holds the port)"}
        return {"ok": True, "ms": round((time.monotonic() - t) * 1000, 1)}
    except OSError as e:
        if isinstance(e, socket.timeout) or str(e) == "timed out":
            return {"error": "bad answer (connected, but nothing answered within %g s)" % float(timeout)}
        return {"error": e.strerror or str(e)}
    finally:
        c.close()


ACTIONS = {"addrs": addrs, "route": route, "listen": listen, "connect": connect, "stop": stop}
print(json.dumps([ACTIONS[a[0]](*a[1:]) for a in json.loads(sys.argv[1])]))
