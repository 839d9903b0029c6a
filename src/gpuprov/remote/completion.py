# The proof of readiness: a real 1-token chat completion made on the host itself (the engine binds 127.0.0.1),
# with the API key read here from the 0600 env file, never from argv (chat_completion, in _common.py).
# Argument: JSON {port, env_file, model, timeout}; prints JSON.
import json

a = json.loads(sys.argv[1])
print(json.dumps(chat_completion(a["port"], a["env_file"], a["model"], a["timeout"])))
