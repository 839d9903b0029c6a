"""The benchmark job as a pyinfra deploy."""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, python, server

HERE = Path(__file__).resolve().parent
JOB = json.loads((HERE.parent / "job" / "vars.json").read_text())
T = "/opt/bench/pyinfra"

for cmd in ("uname -r", "cat /etc/os-release", "python3 --version", "df -B1 /", "fake-nvidia-smi"):
    host.get_fact(Command, cmd)

files.directory(name="opt dir", path=f"{T}/opt", mode="755")
files.template(name="unit", src=str(HERE.parent / "job" / "vllm.service.j2"), dest=f"{T}/vllm.service", mode="644",
               **JOB, host_id=host.data.host_id, host_label=host.data.host_label)
files.put(name="env file", src=StringIO(f"HF_HOME=/opt/hf\nVLLM_LOGGING_LEVEL=INFO\nHOST={host.data.host_label}\n"),
          dest=f"{T}/vllm.env", mode="600")
check = server.shell(name="python check", commands=["test -x /usr/bin/python3 && echo ok"])


def use_it():
    assert check.stdout.strip() == "ok"


python.call(name="use it", function=use_it)
