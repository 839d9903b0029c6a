# gpuprov state gatherer: runs on the host under `python3 -S` (stdlib only). The queries arrive as a Python
# literal in the line `main([...])` appended to the program; the answers leave as one Python literal (repr),
# which gpuprov reads with ast.literal_eval. One exec answers every operation of a play, which is what makes
# a no-op run one round trip. Imports are lazy and json/subprocess are avoided: a 50-host run pays this
# start-up 50 times (python3 -S with no imports starts in ~5 ms; json + subprocess add ~10 ms).
import stat


def q_stat(q):
    p = q["path"]
    try:
        st = os.lstat(p)
    except OSError:
        return {"exists": False}
    kind = "link" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "file"
    out = {"exists": True, "type": kind, "mode": format(stat.S_IMODE(st.st_mode), "04o"), "uid": st.st_uid,
           "gid": st.st_gid, "size": st.st_size, "mtime": st.st_mtime}
    if kind == "link":
        out["target"] = os.readlink(p)
    if kind == "file" and q.get("hash"):
        import hashlib

        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out["sha256"] = h.hexdigest()
        if q.get("content") and st.st_size <= 262144:
            with open(p, "rb") as f:
                out["content"] = f.read().decode("utf-8", "replace")
    return out


def norm(name):
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def q_pip(q):
    venv = q["venv"]
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        return {"exists": False, "packages": {}}
    import glob

    pkgs = {}
    for d in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "*.dist-info")):
        base = os.path.basename(d)[: -len(".dist-info")]
        name, _, version = base.partition("-")
        try:
            with open(os.path.join(d, "METADATA"), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("Name:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("Version:"):
                        version = line.split(":", 1)[1].strip()
                    elif not line.strip():
                        break
        except OSError:
            pass
        pkgs[norm(name)] = version
    return {"exists": True, "packages": pkgs, "python": os.path.realpath(py)}


def run(argv, timeout=20):
    """posix_spawn with two pipes (cheaper to import than subprocess); (rc, stdout, stderr)."""
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
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)
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
    rc = os.waitstatus_to_exitcode(status)
    return rc, b"".join(bufs[out_r]).decode("utf-8", "replace"), b"".join(bufs[err_r]).decode("utf-8", "replace")


def q_service(q):
    if q["manager"] == "systemd":
        rc, out, err = run(["systemctl", "show", q["name"], "-p", SYSTEMD_PROPS])
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {"manager": "systemd", "rc": rc, "props": props, "err": err[-500:]}
    pid = pid_alive(q["pidfile"])
    out = {"manager": "supervisor", "running": pid is not None, "pid": pid}
    try:
        import json

        with open(q["pidfile"] + ".state") as f:
            out["state"] = json.load(f)
    except (OSError, ValueError):
        out["state"] = {}
    return out


def q_dpkg(q):
    rc, out, _ = run(["dpkg-query", "-W", "-f", "${Package} ${Status}\\n"] + q["packages"])
    installed = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] == "installed":
            installed.add(parts[0])
    return {"installed": sorted(installed)}


def q_which(q):
    import shutil

    return {"path": shutil.which(q["name"])}


def q_cmd(q):
    rc, out, err = run(q["argv"], timeout=q.get("timeout", 60))
    return {"rc": rc, "stdout": out, "stderr": err[-4000:]}


HANDLERS = {"stat": q_stat, "pip": q_pip, "service": q_service, "dpkg": q_dpkg, "which": q_which, "cmd": q_cmd}


def main(queries):
    answers = []
    for q in queries:
        try:
            answers.append(HANDLERS[q["kind"]](q))
        except Exception as e:  # noqa: BLE001 - an answer per query, always
            answers.append({"error": "%s: %s" % (type(e).__name__, e)})
    sys.stdout.write(repr(answers))


# main([...]) is appended by gpuprov.executor.gather
