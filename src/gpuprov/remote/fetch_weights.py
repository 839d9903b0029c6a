#!/usr/bin/env python3
# gpuprov weights fetcher: runs on the host inside gpuprov's bootstrap venv (which has huggingface_hub).
#   start  check free disk, then download the model into HF_HOME with huggingface_hub; detaches from the SSH
#          session (started with `setsid -f`), writes progress to <marker>.status (JSON) and <marker> when done.
#   wait   block until <marker> exists (exit 0) or the download failed / timed out (exit 1, reason on stderr).
#   status print the status JSON with the bytes on disk so far.
# The HF token is read from the 0600 env file, never from argv.
import argparse
import json
import shutil
import time

IGNORE = ["original/*", "metal/*", "*.pth", "consolidated*"]


def write_status(marker, **kw):
    path = marker + ".status"
    old = {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        pass
    old.update(kw, updated=time.time())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(old, f)
    os.replace(tmp, path)


def repo_dir(hf_home, model):
    return os.path.join(hf_home, "hub", "models--" + model.replace("/", "--"))


def on_disk(hf_home, model):
    total = 0
    for root, _, names in os.walk(os.path.join(repo_dir(hf_home, model), "blobs")):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(root, n))
            except OSError:
                pass
    return total


def cmd_start(a):
    os.makedirs(os.path.dirname(a.marker), exist_ok=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    logfd = os.open(a.marker + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    env = read_env(a.env_file)
    for k in ("HF_TOKEN", "HF_ENDPOINT"):  # not HF_HUB_OFFLINE: that one is for the engine
        if env.get(k):
            os.environ[k] = env[k]
    os.environ["HF_HOME"] = a.hf_home
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    write_status(a.marker, phase="starting", model=a.model, pid=os.getpid(), error=None)
    os.makedirs(a.hf_home, exist_ok=True)
    free = shutil.disk_usage(a.hf_home).free
    if free < a.min_free_gib * 2**30:
        write_status(a.marker, phase="failed", error="only %.1f GiB free in %s; the model needs about %.1f GiB"
                     % (free / 2**30, a.hf_home, a.min_free_gib))
        return 1
    try:
        from huggingface_hub import HfApi, snapshot_download

        info = HfApi().model_info(a.model, files_metadata=True)
        total = sum((s.size or 0) for s in info.siblings or []
                    if not any(s.rfilename.startswith(p.rstrip("*")) for p in IGNORE if p.endswith("/*")))
        write_status(a.marker, phase="downloading", total_bytes=total, revision=info.sha)
        path = snapshot_download(a.model, ignore_patterns=IGNORE)
    except Exception as e:  # noqa: BLE001 - the reason goes to the status file
        msg = str(e).splitlines()[0][:400] if str(e) else type(e).__name__
        tok = os.environ.get("HF_TOKEN")
        if tok:
            msg = msg.replace(tok, "***")
        write_status(a.marker, phase="failed", error="%s: %s" % (type(e).__name__, msg))
        return 1
    write_status(a.marker, phase="done", path=path, done_bytes=on_disk(a.hf_home, a.model))
    with open(a.marker, "w") as f:
        f.write(path + "\n")
    return 0


def cmd_wait(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        if os.path.exists(a.marker):
            return 0
        try:
            with open(a.marker + ".status") as f:
                st = json.load(f)
            if st.get("phase") == "failed":
                sys.stderr.write("weights download failed: %s\n" % st.get("error"))
                return 1
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    sys.stderr.write("weights not downloaded after %ss\n" % a.timeout)
    return 1


def cmd_status(a):
    try:
        with open(a.marker + ".status") as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {"phase": "not started"}
    if st.get("model") and a.hf_home:
        st["done_bytes"] = on_disk(a.hf_home, st["model"])
    print(json.dumps(st))
    return 0


def main():
    ap = argparse.ArgumentParser(prog="gpuprov-fetch")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--model", required=True)
    s.add_argument("--hf-home", required=True)
    s.add_argument("--env-file", required=True)
    s.add_argument("--marker", required=True)
    s.add_argument("--min-free-gib", type=float, default=0)
    w = sub.add_parser("wait")
    w.add_argument("--marker", required=True)
    w.add_argument("--timeout", type=float, default=3600)
    t = sub.add_parser("status")
    t.add_argument("--marker", required=True)
    t.add_argument("--hf-home")
    a = ap.parse_args()
    return {"start": cmd_start, "wait": cmd_wait, "status": cmd_status}[a.cmd](a)


sys.exit(main())
