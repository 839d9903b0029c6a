#!/usr/bin/env python3
# gpuprov supervisor, for hosts without systemd (RunPod pods and other containers). Standard library only.
# It gives a command the meaning of a systemd unit with Restart=on-failure (or Restart=no with --restart no: a
# node of a multinode engine cannot rejoin alone, so its deployment restarts as a whole):
#   start   run COMMAND, restart it when it exits non-zero (backoff 1 s → 30 s), append its output to --log,
#           keep --pidfile (the supervisor) and --pidfile.state (child pid, restarts, last exit) current.
#           Started with `setsid -f`, so it survives the SSH session that started it.
#   stop    SIGTERM the supervisor, which stops the child (SIGKILL after 20 s) and removes the pid file.
#   wait-started   exit 0 once the supervisor runs and its child has been started.
import argparse
import json
import signal
import subprocess
import time

ROTATE_BYTES = 200 * 1024 * 1024


def cmd_start(a):
    pid = read_pid(a.pidfile)
    if pid and alive(pid):
        return 0
    # detach from the SSH session's pipes before anything else
    devnull = os.open(os.devnull, os.O_RDWR)
    os.makedirs(os.path.dirname(a.log) or ".", exist_ok=True)
    if os.path.exists(a.log) and os.path.getsize(a.log) > ROTATE_BYTES:
        os.replace(a.log, a.log + ".1")
    logfd = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    write_atomic(a.pidfile, pid_record(os.getpid()))
    state = {"restarts": 0, "child": None, "last_exit": None, "started_at": time.time(), "argv": a.command}
    stopping = {"flag": False}
    child = {"p": None}

    def on_term(signum, frame):
        stopping["flag"] = True
        p = child["p"]
        if p and p.poll() is None:
            p.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    backoff = 1.0
    env = dict(os.environ)
    env.update(read_env(a.env_file))
    while not stopping["flag"]:
        log = os.fdopen(os.dup(logfd), "a")
        log.write("[gpuprov-supervise] starting %s\n" % " ".join(a.command[:1]))
        log.flush()
        t0 = time.time()
        child["p"] = p = subprocess.Popen(a.command, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, env=env,
                                          cwd=a.workdir or None, start_new_session=True)
        log.close()
        state["child"] = p.pid
        state["child_ticks"] = start_ticks(p.pid)
        state["child_started_at"] = t0
        write_atomic(a.pidfile + ".state", json.dumps(state))
        while True:
            try:
                code = p.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if stopping["flag"]:
                    try:
                        code = p.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, signal.SIGKILL)
                        code = p.wait()
                    break
        state["last_exit"] = code
        state["child"] = None
        state["stopped"] = bool(stopping["flag"])
        write_atomic(a.pidfile + ".state", json.dumps(state))
        if stopping["flag"] or code == 0 or a.restart == "no":
            if code and not stopping["flag"]:
                os.write(logfd, ("[gpuprov-supervise] exited with %s; not restarted (restart: no)\n" % code).encode())
            break
        if time.time() - t0 > 60:
            backoff = 1.0
        os.write(logfd, ("[gpuprov-supervise] exited with %s; restarting in %.0f s\n" % (code, backoff)).encode())
        for _ in range(int(backoff * 10)):
            if stopping["flag"]:
                break
            time.sleep(0.1)
        backoff = min(backoff * 2, 30.0)
        state["restarts"] += 1
    try:
        os.unlink(a.pidfile)
    except OSError:
        pass
    return 0


def cmd_stop(a):
    pid = read_pid(a.pidfile)
    if not pid or not alive(pid):
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    try:
        with open(a.pidfile + ".state") as f:
            st = json.load(f)
        child = st.get("child")
        if child and alive(child) and start_ticks(child) == st.get("child_ticks", start_ticks(child)):
            os.killpg(child, signal.SIGKILL)
    except (OSError, ValueError):
        pass
    return 0


def cmd_wait_started(a):
    deadline = time.time() + 20
    while time.time() < deadline:
        pid = read_pid(a.pidfile)
        if pid and alive(pid):
            try:
                with open(a.pidfile + ".state") as f:
                    if json.load(f).get("child"):
                        return 0
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    sys.stderr.write("the supervisor did not start (see its log)\n")
    return 1


def main():
    ap = argparse.ArgumentParser(prog="gpuprov-supervise")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--name", required=True)
    s.add_argument("--pidfile", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--env-file")
    s.add_argument("--workdir")
    s.add_argument("--restart", choices=("on-failure", "no"), default="on-failure")
    s.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("stop", "wait-started"):
        x = sub.add_parser(name)
        x.add_argument("--pidfile", required=True)
    a = ap.parse_args()
    if a.cmd == "start":
        if a.command and a.command[0] == "--":
            a.command = a.command[1:]
        if not a.command:
            ap.error("start needs a command after --")
        return cmd_start(a)
    return {"stop": cmd_stop, "wait-started": cmd_wait_started}[a.cmd](a)


sys.exit(main())
