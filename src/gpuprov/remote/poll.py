# One readiness poll (gpuprov.health.wait_ready): new engine log lines since the last position (journal or the
# supervisor's log), the service state and the HTTP status of /health; once /health answers 200 and the argument
# asks for it ("complete": {env_file, model, timeout}), the 1-token completion too, in the same exec.
# With "wait": S, it watches on the host for up to S s (every half second) and answers as soon as /health is up
# or the engine stops: one exec per few seconds while an engine starts, instead of one python3 and one SSH
# session every half second competing with the engine for the CPU. Argument: JSON; prints JSON.
import time


def chat_completion(port, env_file, model, timeout):
    """The proof of readiness: a real 1-token chat completion made on the host itself (the engine binds
    127.0.0.1): {ok, ms, model, content, finish_reason} or {ok: False, error}. The API key is read here from the
    0600 env file, never from argv."""
    key = read_env(env_file).get("VLLM_API_KEY")
    body = to_json({"model": model, "messages": [{"role": "user", "content": "Say OK."}],
                    "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    t = time.monotonic()
    status, data = local_http(port, "POST", "/v1/chat/completions", body, headers, timeout)
    if status != 200:
        why = data if status is None else "HTTP %s: %s" % (status, data[:300].decode("utf-8", "replace"))
        return {"ok": False, "error": why}
    try:
        d = from_json(data)
        return {"ok": True, "ms": round((time.monotonic() - t) * 1000, 1), "model": d.get("model"),
                "content": d["choices"][0]["message"].get("content"),
                "finish_reason": d["choices"][0].get("finish_reason")}
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def snapshot(a):
    out = {"lines": [], "pos": a["pos"], "health": None, "service": None}
    if a["manager"] == "systemd":
        cmd = ["journalctl", "-u", a["unit"], "-o", "cat", "--no-pager", "--show-cursor", "-n", "400"]
        cmd += ["--after-cursor", a["pos"]] if a["pos"] else ["--since", "@%d" % int(a["since"])]
        lines = spawn(cmd, 30)[1].splitlines()
        if lines and lines[-1].startswith("-- cursor: "):
            out["pos"] = lines.pop()[len("-- cursor: "):]
        out["lines"] = lines
        s = spawn(["systemctl", "show", a["unit"], "-p", "ActiveState,NRestarts,ExecMainStatus"], 30)[1]
        props = dict(kv.split("=", 1) for kv in s.splitlines() if "=" in kv)
        out["service"] = {"active": props.get("ActiveState"), "restarts": int(props.get("NRestarts") or 0),
                          "last_exit": int(props.get("ExecMainStatus") or 0)}
    else:
        try:
            with open(a["log"], "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if a["pos"] is None:  # the first look: this run's lines (from the supervisor's last start) only
                    start = max(0, size - (1 << 18))
                    f.seek(start)
                    data = f.read(1 << 18)
                    pos = start + len(data)
                    i = data.rfind(b"[gpuprov-supervise] starting")
                    if i >= 0:
                        data = data[i:]
                    elif start:  # whole lines only
                        data = data[data.find(b"\n") + 1:]
                else:
                    pos = int(a["pos"])
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
    return out


a = from_json(sys.argv[1])
deadline = time.monotonic() + float(a.get("wait") or 0)
out = snapshot(a)
seen = out["lines"]
while out["health"] != 200 and (out["service"] or {}).get("active") == "active" and time.monotonic() < deadline:
    time.sleep(0.5)
    a["pos"] = out["pos"]
    out = snapshot(a)
    seen += out["lines"]
# an engine that is up needs no start-up story: the last "keep" lines only (what gpuprov keeps; a long-running
# engine's log since its start can be the whole 256 KiB)
out["lines"] = seen[-int(a.get("keep") or 200):] if out["health"] == 200 else seen
if out["health"] == 200 and a.get("complete"):
    c = a["complete"]
    out["completion"] = chat_completion(a["port"], c["env_file"], c["model"], c["timeout"])
print(to_json(out))
