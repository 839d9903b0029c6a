# The proof of readiness: a real 1-token chat completion made on the host itself (the engine binds 127.0.0.1),
# with the API key read here from the 0600 env file, never from argv. Argument: JSON; prints JSON.
import json
import time
import urllib.request

a = json.loads(sys.argv[1])
key = read_env(a["env_file"]).get("VLLM_API_KEY")
body = json.dumps({"model": a["model"], "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}).encode()
req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % a["port"], data=body,
                             headers={"Content-Type": "application/json"})
if key:
    req.add_header("Authorization", "Bearer " + key)
t = time.monotonic()
try:
    with urllib.request.urlopen(req, timeout=a["timeout"]) as r:
        d = json.loads(r.read())
    print(json.dumps({"ok": True, "ms": round((time.monotonic() - t) * 1000, 1), "model": d.get("model"),
                      "content": d["choices"][0]["message"].get("content"),
                      "finish_reason": d["choices"][0].get("finish_reason")}))
except Exception as e:
    print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}))
