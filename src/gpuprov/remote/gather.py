# gpuprov state gatherer: runs on the host under `python3 -S` (stdlib only). The queries arrive as a Python
# literal in the line `main([...])` appended to the program; the answers leave as one JSON document (json.loads
# reads it ~20x faster than ast.literal_eval reads the same as a literal). One exec answers every operation of a
# play, which is what makes a no-op run one round trip. Imports are lazy and json/subprocess/hashlib are
# avoided: a 50-host run pays this start-up 50 times (python3 -S with no imports starts in ~5 ms on a fast
# machine; json + subprocess add ~10 ms).
import stat


def _names(uid, gid):
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return owner, group


def _digest(p, algo):
    if algo == "sha256":
        h = sha256()
    else:
        import hashlib

        h = hashlib.new(algo)
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(p, st):
    kind = ("link" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode)
            else "file" if stat.S_ISREG(st.st_mode) else "other")
    owner, group = _names(st.st_uid, st.st_gid)
    return {"exists": True, "type": kind, "mode": format(stat.S_IMODE(st.st_mode), "04o"), "uid": st.st_uid,
            "gid": st.st_gid, "owner": owner, "group": group, "size": st.st_size, "mtime": st.st_mtime,
            "atime": st.st_atime, "ino": st.st_ino, "dev": st.st_dev, "nlink": st.st_nlink}


def q_stat(q):
    """A path's type, mode, owner; with ``hash`` its sha256 (or the named algorithm), with ``content`` its text
    (up to ``max`` bytes), with ``follow`` what a link points to, with ``tree`` every entry under a folder."""
    p = q["path"]
    try:
        st = os.stat(p) if q.get("follow") else os.lstat(p)
    except OSError:
        if q.get("parent"):
            return {"exists": False, "parent_exists": os.path.isdir(os.path.dirname(p.rstrip("/")) or "/")}
        return {"exists": False}
    out = _entry(p, st)
    if out["type"] == "link":
        out["target"] = os.readlink(p)
        try:
            out["target_type"] = _entry(p, os.stat(p))["type"]
        except OSError:
            out["target_type"] = None
    if out["type"] == "file" and q.get("hash"):
        algo = q["hash"] if isinstance(q["hash"], str) else "sha256"
        try:
            out[algo] = _digest(p, algo)
        except OSError as e:
            out["error"] = str(e)
    if out["type"] == "file" and q.get("content") and st.st_size <= q.get("max", 262144):
        try:
            with open(p, "rb") as f:
                out["content"] = f.read().decode("utf-8", "surrogateescape")
        except OSError as e:
            out["error"] = str(e)
    if out["type"] == "directory" and q.get("tree"):
        tree = []
        for root, dirs, files in os.walk(p):
            for n in sorted(dirs) + sorted(files):
                e = os.path.join(root, n)
                try:
                    tree.append(dict(_entry(e, os.lstat(e)), path=e))
                except OSError:
                    pass
        out["tree"] = tree
    return out


def q_facts(q):
    """Ansible's basic facts (the ones a lab playbook reads), under their Ansible names."""
    import pwd

    osr = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    osr[k] = v.strip('"')
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    names = {"debian": "Debian", "ubuntu": "Ubuntu", "centos": "CentOS", "rhel": "RedHat", "fedora": "Fedora",
             "rocky": "Rocky", "almalinux": "AlmaLinux", "alpine": "Alpine", "arch": "Archlinux"}
    families = {"debian": "Debian", "ubuntu": "Debian", "centos": "RedHat", "rhel": "RedHat", "fedora": "RedHat",
                "rocky": "RedHat", "almalinux": "RedHat", "alpine": "Alpine", "arch": "Archlinux"}
    dist = osr.get("ID", "")
    u = os.uname()
    host = u.nodename
    version = osr.get("VERSION_ID", "")
    pyv = sys.version_info
    return {
        "hostname": host.split(".")[0], "nodename": host, "fqdn": host, "system": u.sysname, "kernel": u.release,
        "architecture": u.machine, "machine": u.machine, "distribution": names.get(dist, dist.capitalize()),
        "distribution_version": version, "distribution_major_version": version.split(".")[0] if version else "",
        "distribution_release": osr.get("VERSION_CODENAME", ""), "os_family": families.get(dist, dist.capitalize()),
        "user_id": pwd.getpwuid(os.getuid()).pw_name, "user_uid": os.getuid(), "user_gid": os.getgid(),
        "user_dir": os.path.expanduser("~"), "env": dict(os.environ), "processor_vcpus": os.cpu_count(),
        "processor_nproc": os.cpu_count(), "memtotal_mb": mem,
        "python_version": "%d.%d.%d" % pyv[:3], "python": {"executable": sys.executable,
                                                          "version": {"major": pyv[0], "minor": pyv[1],
                                                                      "micro": pyv[2]}},
        "pkg_mgr": "apt" if os.path.exists("/usr/bin/apt-get") else "unknown",
        "service_mgr": "systemd" if os.path.isdir("/run/systemd/system") else "service",
        "date_time": {"epoch": str(int(__import__("time").time()))},
    }


def q_user(q):
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(q["name"])
    except KeyError:
        return {"exists": False}
    groups = sorted(g.gr_name for g in grp.getgrall() if q["name"] in g.gr_mem)
    try:
        primary = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        primary = str(pw.pw_gid)
    return {"exists": True, "uid": pw.pw_uid, "gid": pw.pw_gid, "group": primary, "groups": groups,
            "home": pw.pw_dir, "shell": pw.pw_shell, "comment": pw.pw_gecos,
            "home_exists": os.path.isdir(pw.pw_dir)}


def q_group(q):
    import grp

    try:
        g = grp.getgrnam(q["name"])
    except KeyError:
        return {"exists": False}
    return {"exists": True, "gid": g.gr_gid, "members": list(g.gr_mem)}


def q_http(q):
    """One HTTP request from the host (the uri module): status, headers, body (up to 1 MiB)."""
    import ssl
    import urllib.error
    import urllib.request

    body = q.get("body")
    req = urllib.request.Request(q["url"], data=body.encode() if isinstance(body, str) else body,
                                 method=q.get("method", "GET"), headers=q.get("headers") or {})
    ctx = None
    if not q.get("validate_certs", True):
        ctx = ssl._create_unverified_context()
    try:
        r = urllib.request.urlopen(req, timeout=q.get("timeout", 30), context=ctx)
    except urllib.error.HTTPError as e:
        r = e
    except (OSError, ValueError) as e:
        return {"status": -1, "error": str(e), "url": q["url"]}
    with r:
        data = r.read(1 << 20)
        return {"status": r.status if hasattr(r, "status") else r.code, "url": r.geturl(),
                "headers": {k.lower(): v for k, v in r.headers.items()},
                "content": data.decode("utf-8", "replace")}


def norm(name):
    """PEP 503's normal form of a package name: re.sub(r"[-_.]+", "-", name).lower(), without importing re."""
    out, run = [], False
    for ch in name.lower():
        if ch in "-_.":
            if not run:
                out.append("-")
            run = True
        else:
            out.append(ch)
            run = False
    return "".join(out)


def _dist_infos(venv):
    """The venv's lib/python3*/site-packages/*.dist-info folders (glob's answer, without importing glob and re)."""
    lib = os.path.join(venv, "lib")
    try:
        pys = sorted(d for d in os.listdir(lib) if d.startswith("python3"))
    except OSError:
        return []
    found = []
    for d in pys:
        site = os.path.join(lib, d, "site-packages")
        try:
            found += [os.path.join(site, e) for e in sorted(os.listdir(site)) if e.endswith(".dist-info")]
        except OSError:
            pass
    return found


def q_pip(q):
    venv = q["venv"]
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        return {"exists": False, "packages": {}}
    pkgs = {}
    for d in _dist_infos(venv):
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


def q_service(q):
    if q["manager"] == "auto":
        if not os.path.isdir("/run/systemd/system"):
            return {"manager": "none"}
        q = dict(q, manager="systemd")
    if q["manager"] == "systemd":
        rc, out, err = spawn(["systemctl", "show", q["name"], "-p", SYSTEMD_PROPS])
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {"manager": "systemd", "rc": rc, "props": props, "err": err[-500:]}
    pid = pid_alive(q["pidfile"])
    out = {"manager": "supervisor", "running": pid is not None, "pid": pid}
    try:
        with open(q["pidfile"] + ".state") as f:
            out["state"] = from_json(f.read())
    except (OSError, ValueError):
        out["state"] = {}
    return out


def q_dpkg(q):
    """Which of ``packages`` are installed (and their versions); the apt cache's age; with ``candidates``, the
    version apt would install now."""
    import time

    rc, out, _ = spawn(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n"] + q["packages"])
    installed, versions = set(), {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] == "installed":
            installed.add(parts[0])
            versions[parts[0]] = parts[1]
    out = {"installed": sorted(installed), "versions": versions, "now": time.time()}
    for p in ("/var/lib/apt/periodic/update-success-stamp", "/var/lib/apt/lists"):
        try:
            out["cache_mtime"] = os.stat(p).st_mtime
            break
        except OSError:
            pass
    if q.get("candidates"):
        cand = {}
        rc, text, _ = spawn(["apt-cache", "policy"] + q["packages"], timeout=60)
        name = None
        for line in text.splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                name = line[:-1]
            elif name and line.strip().startswith("Candidate:"):
                cand[name] = line.split(":", 1)[1].strip()
        out["candidates"] = cand
    return out


def q_which(q):
    import shutil

    return {"path": shutil.which(q["name"])}


def q_cmd(q):
    rc, out, err = spawn(q["argv"], timeout=q.get("timeout", 60))
    return {"rc": rc, "stdout": out, "stderr": err[-4000:]}


def q_download(q):
    """get_url's download: to a temporary file beside ``dest``, checked against ``checksum``, moved into place
    only when its content differs from what ``dest`` holds (mode ``mode``, else the old file's, else 0644)."""
    import hashlib
    import ssl
    import tempfile
    import urllib.error
    import urllib.request

    dest = q["dest"]
    ctx = None if q.get("validate_certs", True) else ssl._create_unverified_context()
    req = urllib.request.Request(q["url"], headers=q.get("headers") or {})
    try:
        r = urllib.request.urlopen(req, timeout=q.get("timeout", 10), context=ctx)
    except urllib.error.HTTPError as e:
        return {"failed": True, "status_code": e.code, "msg": "Request failed: HTTP Error %s: %s" % (e.code, e.reason)}
    except (OSError, ValueError) as e:
        return {"failed": True, "status_code": -1, "msg": "Request failed: %s" % e}
    algo = q.get("algo") or "sha1"
    h, h1 = hashlib.new(algo), hashlib.sha1()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or "/", prefix=".gpuprov-get.")
    size = 0
    try:
        with r, os.fdopen(fd, "wb") as f:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                h.update(chunk)
                h1.update(chunk)
                size += len(chunk)
        got = h.hexdigest()
        if q.get("checksum") and got != q["checksum"].lower():
            return {"failed": True, "status_code": r.status, "checksum_src": h1.hexdigest(),
                    "msg": "The checksum for %s did not match %s; it was %s." % (dest, q["checksum"], got)}
        old = None
        if os.path.isfile(dest):
            old = _digest(dest, algo)
        if old == got:
            return {"changed": False, "status_code": r.status, "checksum_src": h1.hexdigest(),
                    "checksum_dest": h1.hexdigest(), "size": size, "msg": "file already exists"}
        mode = q.get("mode")
        if mode is None:
            mode = format(stat.S_IMODE(os.stat(dest).st_mode), "o") if os.path.exists(dest) else "644"
        os.chmod(tmp, int(mode, 8))
        os.rename(tmp, dest)
        tmp = None
        return {"changed": True, "status_code": r.status, "checksum_src": h1.hexdigest(),
                "checksum_dest": h1.hexdigest(), "size": size, "msg": "OK (%d bytes)" % size}
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


HANDLERS = {"stat": q_stat, "pip": q_pip, "service": q_service, "dpkg": q_dpkg, "which": q_which, "cmd": q_cmd,
            "facts": q_facts, "user": q_user, "group": q_group, "http": q_http, "download": q_download}


def main(queries):
    answers = []
    for q in queries:
        try:
            answers.append(HANDLERS[q["kind"]](q))
        except Exception as e:  # noqa: BLE001 - an answer per query, always
            answers.append({"error": "%s: %s" % (type(e).__name__, e)})
    sys.stdout.write(to_json(answers))


# main([...]) is appended by gpuprov.executor.gather
