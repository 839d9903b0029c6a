# wait_for: until a TCP port accepts (started) or refuses (stopped), a file is present (holding a regex) or absent,
# a URL answers with the expected status, or only the time passes.
# Arguments: KIND TARGET PORT STATE TIMEOUT STATUS DELAY REGEX SLEEP, KIND one of tcp, path, http, sleep.
import re
import socket
import time
import urllib.error
import urllib.request

kind, target, port, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
timeout, status, delay = float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
regex, pause = sys.argv[8], max(0.1, float(sys.argv[9]))
time.sleep(delay)
deadline = time.monotonic() + timeout
if kind == "sleep":
    time.sleep(timeout)
    sys.exit(0)
last = ""


def ready():
    global last
    if kind == "tcp":
        try:
            socket.create_connection((target, port), timeout=2).close()
            return state == "started"
        except OSError as e:
            last = str(e)
            return state != "started"
    if kind == "path":
        if state == "absent":
            return not os.path.exists(target)
        try:
            with open(target, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            last = str(e)
            return os.path.isdir(target) and not regex
        if regex and not re.search(regex, text, re.M):
            last = "%s does not match %r yet" % (target, regex)
            return False
        return True
    try:
        with urllib.request.urlopen(target, timeout=5) as r:
            last = "HTTP %s" % r.status
            return r.status == status
    except urllib.error.HTTPError as e:
        last = "HTTP %s" % e.code
    except OSError as e:
        last = str(e)
    return False


while True:
    if ready():
        sys.exit(0)
    if time.monotonic() >= deadline:
        break
    time.sleep(pause)
sys.stderr.write("Timeout when waiting for %s%s (%ss): %s\n" % (target, ":%d" % port if kind == "tcp" else "",
                                                                timeout, last))
sys.exit(1)
