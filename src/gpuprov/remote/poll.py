# One readiness poll (gpuprov.health.wait_ready): new engine log lines since the last position (journal or the
# supervisor's log), the service state and the HTTP status of /health; once /health answers 200 and the argument
# asks for it ("complete": {env_file, model, timeout}), the 1-token completion too, in the same exec.
# Argument: JSON; prints JSON.
import json
import subprocess

a = json.loads(sys.argv[1])
out = {"lines": [], "pos": a["pos"], "health": None, "service": None}
if a["manager"] == "systemd":
    cmd = ["journalctl", "-u", a["unit"], "-o", "cat", "--no-pager", "--show-cursor", "-n", "400"]
    cmd += ["--after-cursor", a["pos"]] if a["pos"] else ["--since", "@%d" % int(a["since"])]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = p.stdout.decode("utf-8", "replace").splitlines()
    if lines and lines[-1].startswith("-- cursor: "):
        out["pos"] = lines.pop()[len("-- cursor: "):]
    out["lines"] = lines
    s = subprocess.run(["systemctl", "show", a["unit"], "-p", "ActiveState,NRestarts,ExecMainStatus"],
                       stdout=subprocess.PIPE).stdout.decode()
    props = dict(kv.split("=", 1) for kv in s.splitlines() if "=" in kv)
    out["service"] = {"active": props.get("ActiveState"), "restarts": int(props.get("NRestarts") or 0),
                      "last_exit": int(props.get("ExecMainStatus") or 0)}
else:
    pos = int(a["pos"] or 0)
    try:
        with open(a["log"], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < pos:
                pos = 0
            f.seek(pos)
            data = f.read(1 << 20)
            pos += len(data)
        out["lines"] = data.decode("utf-8", "replace").splitlines()
        out["pos"] = pos
    except OSError:
        pass
    alive, st = supervisor_state(a["pidfile"])
    out["service"] = {"active": "active" if alive else "inactive", "restarts": st.get("restarts", 0),
                      "last_exit": st.get("last_exit")}
out["health"] = http_status(a["port"])
if out["health"] == 200 and a.get("complete"):
    c = a["complete"]
    out["completion"] = chat_completion(a["port"], c["env_file"], c["model"], c["timeout"])
print(json.dumps(out))
