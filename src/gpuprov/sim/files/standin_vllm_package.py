# STAND-IN for vLLM: the `vllm/__init__.py` of the lab's stand-in package (gpuprov.sim.standin_vllm builds the
# wheel, filling in __VERSION__ and __FLAGS__). Runs on sim hosts under their python3 (3.8+, stdlib only).
import argparse
import json
import os
import socket
import sys
import threading
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
        self.lock = threading.Lock()
        # what /metrics reports, under the real engine's names (tests/data/real-engine-cpu-metrics.txt)
        self.running = 0
        self.success = {"stop": 0, "length": 0, "abort": 0, "error": 0, "repetition": 0}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        #: a multinode head whose follower went away: /health still answers (as the real head does for a while),
        #: requests fail
        self.broken = None

    def metrics(self):
        labels = 'engine="0",model_name="%s"' % self.served
        out = []

        def metric(name, kind, help_, samples):
            out.append("# HELP %s %s" % (name, help_))
            out.append("# TYPE %s %s" % (name, kind))
            for extra, value in samples:
                out.append("%s{%s} %.1f" % (name, labels + extra, value))

        with self.lock:
            metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                   [("", self.running)])
            metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", [("", 0)])
            metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
                   [("", 0.0)])
            metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
                   [("", self.prompt_tokens)])
            metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
                   [("", self.generation_tokens)])
            metric("vllm:request_success_total", "counter", "Count of successfully processed requests.",
                   [(',finished_reason="%s"' % r, n) for r, n in sorted(self.success.items())])
        return ("\n".join(out) + "\n").encode()


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
        if self.path == "/metrics":  # no API key, as in the real server
            return self.send(200, self.eng.metrics(), "text/plain; version=0.0.4; charset=utf-8")
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
        if self.eng.broken:
            return self.send(500, {"error": {"message": "EngineCore encountered an issue: " + self.eng.broken,
                                             "type": "InternalServerError", "code": 500}})
        with self.eng.lock:
            self.eng.running += 1
        try:
            self.chat(req)
        finally:
            with self.eng.lock:
                self.eng.running -= 1

    def chat(self, req):
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
        delay = float(os.environ.get("GPUPROV_STANDIN_REQUEST_S", "0") or 0)
        if delay:
            time.sleep(delay)
        with self.eng.lock:
            self.eng.prompt_tokens += usage["prompt_tokens"]
            self.eng.generation_tokens += usage["completion_tokens"]
            self.eng.success["stop" if tool or len(words) >= 12 else "length"] += 1
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


class Multinode:
    """vLLM's native multi-node start, stood in: followers (--headless) join the head's master port and log the
    real engine's lines (the headless executor with the head's address; each rank's "rank r in world size W");
    the head waits for every follower before it loads, and stops serving requests when one goes away."""

    def __init__(self, a, eng):
        self.a, self.eng = a, eng
        self.nnodes = int(a.nnodes or 1)
        self.rank = int(a.node_rank or 0)
        self.addr = a.master_addr or "127.0.0.1"
        self.port = int(a.master_port or 29501)
        self.tp = int(a.tensor_parallel_size or 1)
        self.world = self.tp * int(a.pipeline_parallel_size or 1)
        self.per = self.world // self.nnodes

    def ranks(self):
        for r in range(self.rank * self.per, self.rank * self.per + self.per):
            log("rank %d in world size %d is assigned as DP rank 0, PP rank %d, PCP rank 0, TP rank %d, EP rank N/A"
                % (r, self.world, r // self.tp, r % self.tp), "Worker pid=%d" % os.getpid())

    def follow(self):
        log("Launching vLLM (v%s) headless multiproc executor, with head node address %s:%d for "
            "torch.distributed process group." % (__version__, self.addr, self.port))
        deadline = time.time() + float(os.environ.get("GPUPROV_STANDIN_JOIN_S", "600"))
        while True:
            try:
                sock = socket.create_connection((self.addr, self.port), timeout=3)
                break
            except OSError as e:
                if time.time() > deadline:
                    sys.stderr.write("torch.distributed.DistStoreError: Timed out after %d seconds waiting for "
                                     "clients. (%s:%d: %s)\n" % (600, self.addr, self.port, e))
                    return 1
                time.sleep(1)
        sock.settimeout(None)
        sock.sendall(b"%d\n" % self.rank)
        self.ranks()
        if os.environ.get("GPUPROV_STANDIN_FAIL") == "oom":  # this node dies while the engine loads
            time.sleep(1)
            sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n")
            return 1
        while sock.recv(1024):
            pass
        sys.stderr.write("RuntimeError: the head node %s:%d went away (connection closed)\n" % (self.addr, self.port))
        return 1

    def lead(self):
        ip = os.environ.get("VLLM_HOST_IP") or "0.0.0.0"
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind(("0.0.0.0", self.port))
        except OSError as e:
            sys.stderr.write("torch.distributed.DistNetworkError: The server socket has failed to listen on any local "
                             "network address. port: %d, useIpv6: false, code: -%d, name: EADDRINUSE, message: %s\n"
                             % (self.port, e.errno, e.strerror))
            return False
        srv.listen(16)
        log("DP group leader: node_rank=0, node_rank_within_dp=0, master_addr=%s, mq_connect_ip=%s (local), "
            "world_size=%d, local_world_size=%d" % (self.addr, ip, self.world, self.per))
        self.ranks()
        peers = []
        srv.settimeout(float(os.environ.get("GPUPROV_STANDIN_JOIN_S", "600")))
        while len(peers) < self.nnodes - 1:
            try:
                c, where = srv.accept()
            except socket.timeout:
                sys.stderr.write("torch.distributed.DistStoreError: Timed out waiting for %d of %d nodes\n"
                                 % (self.nnodes - 1 - len(peers), self.nnodes - 1))
                return False
            rank = c.recv(64).decode().strip()
            peers.append((rank, c))
            log("node rank %s joined from %s" % (rank, where[0]))
        for rank, c in peers:
            threading.Thread(target=self.watch, args=(rank, c), daemon=True).start()
        return True

    def watch(self, rank, c):
        c.settimeout(None)
        try:
            while c.recv(1024):
                pass
        except OSError:
            pass
        self.eng.broken = "node rank %s went away" % rank
        sys.stderr.write("ERROR EngineCore: RuntimeError: node rank %s closed its connection\n" % rank)
        sys.stderr.flush()


def make_handler(eng):
    return type("H", (Handler,), {"eng": eng})


def parse(argv):
    if STRICT:
        return parser().parse_args(argv)
    a, unknown = parser().parse_known_args(argv)
    if unknown:
        log("WARNING stand-in for vLLM %s (no recorded parser): ignoring %s" % (__version__, " ".join(unknown)))
    return a


def log_graphs_and_routes(step, host, port):
    log("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|##########| 67/67", "EngineCore")
    log("Graph capturing finished in %.0f secs, took 0.49 GiB" % (step * 2), "EngineCore")
    log("init engine (profile, create kv cache, warmup model) took %.2f s" % (step * 4), "EngineCore")
    log("Starting vLLM server on http://%s:%d" % (host, port))
    log("Available routes are:")
    for r in ("/health", "/version", "/metrics", "/v1/models", "/v1/chat/completions"):
        log("Route: %s, Methods: %s" % (r, "POST" if "completions" in r else "GET"))


def serve(argv):
    a = parse(argv)
    eng = Engine(a)
    if not eng.model:
        sys.stderr.write("vllm serve: error: the model is required\n")
        return 2
    delay = float(os.environ.get("GPUPROV_STANDIN_DELAY", "2"))
    step = delay / 8
    log("vLLM server version %s, serving model %s" % (__version__, eng.model))
    multi = Multinode(a, eng) if int(getattr(a, "nnodes", None) or 1) > 1 else None
    if multi and getattr(a, "headless", False):  # a follower serves no API: it runs its ranks for the head
        return multi.follow()
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
    if multi and not multi.lead():
        sys.stderr.write("EngineCore failed to start.\n")
        return 1
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
    log_graphs_and_routes(step, host, port)
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
