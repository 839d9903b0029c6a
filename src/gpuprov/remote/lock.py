# gpuprov's run lock on this host (gpuprov.hostlock): take an exclusive flock on argv[1] (writing argv[2], who holds
# it), optionally wait for an earlier run's orphaned commands to let go of the work lock argv[3] (they hold it
# shared; give up after argv[4] s), print LOCKED / BUSY <holder> / ORPHANS, then hold the lock until stdin closes:
# that is, until gpuprov's SSH channel closes, so a run that dies releases the lock by itself.
import fcntl
import signal
import time

f = open(sys.argv[1], "a+")
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    f.seek(0)
    print("BUSY " + (f.read().strip() or "?"), flush=True)
    sys.exit(0)
f.truncate(0)
f.write("%s since %s\n" % (sys.argv[2], time.strftime("%H:%M:%S")))
f.flush()
if len(sys.argv) > 3:
    w = open(sys.argv[3], "a+")
    signal.alarm(int(sys.argv[4]))
    try:
        fcntl.flock(w, fcntl.LOCK_EX)
    except OSError:
        print("ORPHANS", flush=True)
        sys.exit(0)
    signal.alarm(0)
    fcntl.flock(w, fcntl.LOCK_UN)
    w.close()
print("LOCKED", flush=True)
sys.stdin.read()
