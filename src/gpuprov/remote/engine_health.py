# Does the engine on this host answer /health? Argument: the port. Prints "ok" or the reason.
status = http_status(int(sys.argv[1]), timeout=5)
print("ok" if status == 200 else ("HTTP %s" % status if status else "nothing answers on port %s" % sys.argv[1]))
