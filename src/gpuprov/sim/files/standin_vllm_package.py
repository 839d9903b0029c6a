# STAND-IN for vLLM: the `vllm/__init__.py` of the lab's stand-in package (gpuprov.sim.standin_vllm builds the
# wheel, filling in __VERSION__ and __FLAGS__). Runs on sim hosts under their python3 (3.8+, stdlib only).
import argparse
import json
import os
import socket
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__version__ = "__VERSION__"
FLAGS = __FLAGS__
#: False for a version whose parser gpuprov never recorded: unknown flags are then ignored with a warning (the
#: real parser's verdict is unknown), where a recorded version refuses them as vLLM does
STRICT = __STRICT__


def log(msg, who="APIServer"):
    sys.stderr.write("(%s pid=%d) INFO %s %s\n" % (who, os.getpid(), time.strftime("%m-%d %H:%M:%S"), msg))
    sys.stderr.flush()


def parser():
    p = argparse.ArgumentParser(prog="vllm serve")
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model")
    for flag, info in FLAGS.items():
        if flag in p._option_string_actions:  # --help, --model: already there
            continue
        if info.get("takes_value", True):
            p.add_argument(flag, action="append" if flag == "--api-key" else "store")
        else:
            p.add_argument(flag, action="store_true")
    return p


def weights(model):
    home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    repo = os.path.join(home, "hub", "models--" + model.replace("/", "--"), "snapshots")
    files = []
    for root, _, names in os.walk(repo):
        files += [os.path.join(root, n) for n in names if n.endswith(".safetensors")]
    return sorted(files)


class Engine:
    def __init__(self, a):
        self.a = a
        self.model = a.model_tag or a.model
        self.served = a.served_model_name or self.model
        self.api_key = (a.api_key or [None])[-1] or os.environ.get("VLLM_API_KEY")


class Handler(BaseHTTPRequestHandler):
    eng = None  # the Engine this server answers for (make_handler)
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("(APIServer pid=%d) INFO:     %s:%d - %s\n" % (os.getpid(), self.client_address[0],
                                                                 self.client_address[1], fmt % args))

    def send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if not self.eng.api_key or not self.path.startswith("/v1"):
            return True
        if self.headers.get("Authorization") == "Bearer " + self.eng.api_key:
            return True
        self.send(401, {"error": "Unauthorized"})
        return False

    def stream(self, base, words, tool):
        """Server-sent events, chunked, the way vLLM streams a chat completion."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(obj):
            data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]})
        if tool:
            chunk({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **tool}]},
                                        "finish_reason": None}]})
        else:
            for i, w in enumerate(words):
                chunk({**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                            "finish_reason": None}]})
        chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool else
                                    ("length" if len(words) < 12 else "stop")}]})
        chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self):
        if self.path in ("/health", "/ping"):
            return self.send(200, b"", "text/plain")
        if self.path == "/version":
            return self.send(200, {"version": __version__})
        if not self.authorized():
            return
        if self.path == "/v1/models":
            return self.send(200, {"object": "list", "data": [{"id": self.eng.served, "object": "model",
                                   "owned_by": "vllm", "root": self.eng.model,
                                   "max_model_len": int(self.eng.a.max_model_len or 4096)}]})
        self.send(404, {"detail": "Not Found"})

    def do_POST(self):
        if self.path == "/ping":
            return self.send(200, b"", "text/plain")
        if not self.authorized():
            return
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self.send(400, {"error": "invalid JSON"})
        if self.path != "/v1/chat/completions":
            return self.send(404, {"detail": "Not Found"})
        if req.get("model") not in (self.eng.served, self.eng.model):
            return self.send(404, {"error": {"message": "The model `%s` does not exist." % req.get("model"),
                                             "type": "NotFoundError", "code": 404}})
        last = (req.get("messages") or [{}])[-1].get("content") or ""
        if isinstance(last, list):
            last = " ".join(x.get("text", "") for x in last if isinstance(x, dict))
        words = ("Hello from the gpuprov stand-in engine (no GPU here): you said " + last).split()
        words = words[: max(1, int(req.get("max_tokens") or req.get("max_completion_tokens") or 64))]
        rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        tool = None
        if req.get("tools") and req.get("tool_choice") != "none":
            fn = req["tools"][0]["function"]
            tool = {"id": "call_" + uuid.uuid4().hex[:8], "type": "function",
                    "function": {"name": fn["name"], "arguments": json.dumps({"stand_in": True})}}
        usage = {"prompt_tokens": len(str(req.get("messages")).split()), "completion_tokens": len(words),
                 "total_tokens": len(str(req.get("messages")).split()) + len(words)}
        if req.get("stream"):
            return self.stream({"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": self.eng.served}, words, tool)
        msg = {"role": "assistant", "content": None if tool else " ".join(words)}
        if tool:
            msg["tool_calls"] = [tool]
        self.send(200, {"id": rid, "object": "chat.completion", "created": created, "model": self.eng.served,
                        "choices": [{"index": 0, "message": msg,
                                     "finish_reason": "tool_calls" if tool else "stop"}],
                        "usage": usage})


def make_handler(eng):
    return type("H", (Handler,), {"eng": eng})


def parse(argv):
    if STRICT:
        return parser().parse_args(argv)
    a, unknown = parser().parse_known_args(argv)
    if unknown:
        log("WARNING stand-in for vLLM %s (no recorded parser): ignoring %s" % (__version__, " ".join(unknown)))
    return a


def serve(argv):
    a = parse(argv)
    eng = Engine(a)
    if not eng.model:
        sys.stderr.write("vllm serve: error: the model is required\n")
        return 2
    delay = float(os.environ.get("GPUPROV_STANDIN_DELAY", "2"))
    step = delay / 8
    log("vLLM server version %s, serving model %s" % (__version__, eng.model))
    nd = {k: v for k, v in vars(a).items() if v not in (None, False) and k != "api_key"}
    log("non-default args: %s" % nd)
    host = a.host or "0.0.0.0"
    port = int(a.port or 8000)
    # bind early like the real server (so a busy port fails fast), listen only when ready
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sys.stderr.write("OSError: [Errno %d] error while attempting to bind on address (%r, %d): %s\n"
                         % (e.errno, host, port, e.strerror))
        return 1
    max_len = int(a.max_model_len or 4096)
    log("Using max model len %d" % max_len)
    log("Initializing a V1 LLM engine (v%s) with config: model=%r" % (__version__, eng.model),
        "EngineCore pid=%d" % os.getpid())
    log("Starting to load model %s..." % eng.model, "EngineCore")
    files = weights(eng.model)
    size = sum(os.path.getsize(f) for f in files)
    log("Filesystem type for checkpoints: ext4. Checkpoint size: %.2f GiB. Available RAM: 20.00 GiB."
        % (size / 2**30), "EngineCore")
    n = max(1, len(files))
    for i in range(1, n + 1):
        time.sleep(step * 3 / n)
        log("Loading safetensors checkpoint shards: %3d%% Completed | %d/%d [00:0%d<00:00,  1.00it/s]"
            % (100 * i // n, i, n, i), "EngineCore")
    if os.environ.get("GPUPROV_STANDIN_FAIL") == "oom":
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
                         "GPU 0 has a total capacity of 79.19 GiB\n")
        sys.stderr.write("EngineCore failed to start.\n")
        return 1
    log("Loading weights took %.2f seconds" % (step * 3), "EngineCore")
    log("Model loading took %.4f GiB memory and %.6f seconds" % (size / 2**30, step * 3), "EngineCore")
    time.sleep(step * 2)
    log("torch.compile took %.2f s in total" % (step * 2), "EngineCore")
    cap = int(os.environ.get("GPUPROV_STANDIN_KV_TOKENS", "0") or 0)
    kv_tokens = cap or max_len * 8
    log("Available KV cache memory: %.2f GiB" % (kv_tokens * 24576 / 2**30), "EngineCore")
    if cap and max_len > cap:
        sys.stderr.write("ValueError: To serve at least one request with the models's max seq len (%d), "
                         "(%.2f GiB KV cache is needed, which is larger than the available KV cache memory (%.2f GiB). "
                         "Based on the available memory, the estimated maximum model length is %d. Try increasing "
                         "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n"
                         % (max_len, max_len * 24576 / 2**30, cap * 24576 / 2**30, cap))
        sys.stderr.write("EngineCore failed to start.\n")
        return 1
    log("GPU KV cache size: {:,} tokens, Maximum concurrency for {:,} tokens per request: {:.2f}x".format(
        kv_tokens, max_len, kv_tokens / max_len), "EngineCore")
    time.sleep(step * 2)
    log("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|##########| 67/67", "EngineCore")
    log("Graph capturing finished in %.0f secs, took 0.49 GiB" % (step * 2), "EngineCore")
    log("init engine (profile, create kv cache, warmup model) took %.2f s" % (step * 4), "EngineCore")
    log("Starting vLLM server on http://%s:%d" % (host, port))
    log("Available routes are:")
    for r in ("/health", "/version", "/v1/models", "/v1/chat/completions"):
        log("Route: %s, Methods: %s" % (r, "POST" if "completions" in r else "GET"))
    srv = ThreadingHTTPServer((host, port), make_handler(eng), bind_and_activate=False)
    srv.socket.close()
    srv.socket = sock
    srv.server_activate()
    log("Started server process [%d]" % os.getpid())
    log("Waiting for application startup.")
    log("Application startup complete.")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--version"]:
        print(__version__)
        return 0
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["download-kernels"] and tuple(int(x) for x in __version__.split("+")[0].split(".")[:2]) >= (0, 32):
        print("Downloaded FlashInfer kernels (stand-in: nothing to download)")
        return 0
    sys.stderr.write("usage: vllm {serve,download-kernels} ... (gpuprov stand-in)\n")
    return 2
