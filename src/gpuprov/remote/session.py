# gpuprov's session on this host (gpuprov.hostlock.HostSession): one SSH channel that runs gpuprov's host-side
# programs one after another (the probe, the state gathering) and holds the run lock, so what used to be an exec
# each is one exec in all. Requests come on stdin, one JSON line each, and are answered by one JSON line + bytes:
#   {"op": "run", "argv": [...], "stdin": N, "timeout": T} + N bytes  ->  {"rc": R, "out": N1, "err": N2} + bytes
#   {"op": "lock", "path": P, "owner": O, "work_lock": W or null, "wait": S}  ->  {"lock": "LOCKED" | "BUSY <who>"
#       | "ORPHANS"}: an exclusive flock on P (writing O, who holds it); with W, wait up to S s for an earlier
#       run's orphaned commands to let go of the work lock W (they hold it shared).
#   {"op": "py", "code": N, "tail": T, "key": K, "argv": [...], "timeout": T} + N + T bytes (one of gpuprov's
#       programs, as the loader takes it)  ->  as "run", but the program runs inside this Python (a fresh namespace,
#       its own argv, stdout and stderr captured; fds 0, 1 and 2 pointed away from this channel meanwhile; its code
#       compiled once per host by the loader's gpuprov_code): no second interpreter to start for the probe, the
#       state gathering or the readiness check.
# EOF on stdin (the channel closed: the run ended, or died) ends the session, which lets go of the lock.
import fcntl
import time

signal = signals()
held = []


def take_lock(req):
    f = open(req["path"], "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip() or "?"
        f.close()
        return "BUSY " + who
    f.truncate(0)
    f.write("%s since %s\n" % (req["owner"], time.strftime("%H:%M:%S")))
    f.flush()
    held.append(f)
    if req.get("work_lock"):
        w = open(req["work_lock"], "a+")
        signal.alarm(int(req.get("wait") or 900))
        try:
            fcntl.flock(w, fcntl.LOCK_EX)
        except OSError:
            return "ORPHANS"
        finally:
            signal.alarm(0)
        fcntl.flock(w, fcntl.LOCK_UN)
        w.close()
    return "LOCKED"


def run(req, data):
    import subprocess

    try:
        p = subprocess.run(req["argv"], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=req.get("timeout"))
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or b"", (e.stderr or b"") + b"\ngpuprov session: timed out\n"
    except OSError as e:
        return 127, b"", ("gpuprov session: %s\n" % e).encode()


class ProgramTimeout(BaseException):
    pass


def run_program(req, data):
    import io

    out, err = io.StringIO(), io.StringIO()
    saved = (sys.stdout, sys.stderr, sys.argv, os.dup(0), os.dup(1), os.dup(2))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # a child the program starts must not read our requests or write into our answers
        os.dup2(null, fd)  # (the channel may carry stderr and stdout as one stream)
    os.close(null)
    sys.stdout, sys.stderr, sys.argv = out, err, ["gpuprov-remote"] + list(req.get("argv") or [])

    def on_timeout(signum, frame):
        raise ProgramTimeout()

    old = signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(max(1, int(req.get("timeout") or 120)))
    rc = 0
    try:
        n = int(req["code"])
        ns = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(gpuprov_code(data[:n], req["key"]), ns)  # noqa: F821 - the loader's, in whose namespace we run
        if data[n:]:
            exec(compile(data[n:], "gpuprov-remote", "exec"), ns)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            err.write("%s\n" % e.code)
            rc = 1
    except ProgramTimeout:
        err.write("gpuprov session: timed out\n")
        rc = 124
    except BaseException:  # noqa: BLE001 - the program's failure is its answer, the session goes on
        import traceback

        err.write(traceback.format_exc())
        rc = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sys.stdout, sys.stderr, sys.argv = saved[0], saved[1], saved[2]
        for fd, copy in ((0, saved[3]), (1, saved[4]), (2, saved[5])):
            os.dup2(copy, fd)
            os.close(copy)
    return rc, out.getvalue().encode("utf-8", "replace"), err.getvalue().encode("utf-8", "replace")


def answer(head, *blobs):
    sys.stdout.buffer.write((to_json(head) + "\n").encode())
    for b in blobs:
        sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()


def on_alarm(signum, frame):
    raise OSError("timed out waiting for the work lock")


signal.signal(signal.SIGALRM, on_alarm)
inp = sys.stdin.buffer
while True:
    line = inp.readline()
    if not line:
        break
    req = from_json(line)
    if req["op"] == "lock":
        answer({"lock": take_lock(req)})
    elif req["op"] in ("run", "py"):
        n = int(req.get("stdin") or 0) if req["op"] == "run" else int(req["code"]) + int(req.get("tail") or 0)
        data = inp.read(n) if n else b""
        rc, out, err = run(req, data) if req["op"] == "run" else run_program(req, data)
        answer({"rc": rc, "out": len(out), "err": len(err)}, out, err)
    else:
        answer({"error": "unknown op %r" % req["op"]})
