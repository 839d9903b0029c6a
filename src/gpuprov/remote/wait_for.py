# wait_for: until a TCP port accepts or a URL answers with the expected status, or the timeout passes.
# Arguments: tcp HOST PORT TIMEOUT STATUS | http URL 0 TIMEOUT STATUS.
import socket
import time
import urllib.error
import urllib.request

kind, target, port, timeout, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + timeout
last = ""
while time.monotonic() < deadline:
    try:
        if kind == "tcp":
            socket.create_connection((target, port), timeout=2).close()
            sys.exit(0)
        with urllib.request.urlopen(target, timeout=5) as r:
            if r.status == status:
                sys.exit(0)
            last = "HTTP %s" % r.status
    except urllib.error.HTTPError as e:
        last = "HTTP %s" % e.code
    except OSError as e:
        last = str(e)
    time.sleep(0.5)
sys.stderr.write("not ready after %ss: %s\n" % (timeout, last))
sys.exit(1)
