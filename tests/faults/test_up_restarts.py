"""`rlhf up` is the deployment on one machine: a service killed with -9 is
restarted (with backoff, and it says so), a service that crashes right away
again and again backs off up to the cap, and only SIGTERM / Ctrl-C stops the
stack, with exit code 0.

Real processes: `python -m rlhf_cli.main up` with the policy and the feedback
gateway on the test broker and a tiny model store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from rlhf_cli.stack import SERVICE_PORTS
from shared.proto.rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from tests.faults.harness import channel, write_report
from tests.helpers import free_port_offset, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two services started, killed, crash-looped and restarted: about a minute


def children(pid: int) -> dict[str, int]:
    """Service name -> pid of ``pid``'s `python -m services.<name>` children (Linux /proc)."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        for arg in cmdline:
            if arg.startswith(b"services."):
                out[arg.decode().split(".", 1)[1]] = int(child)
    return out


def generate(stub, timeout_s: float = 20.0) -> policy_pb2.GenerateResponse:
    request = policy_pb2.GenerateRequest(
        prompt="User: hi\nAssistant:", sampling=common_pb2.SamplingParams(max_new_tokens=4)
    )
    return stub.Generate(request, timeout=timeout_s)


def answers(stub) -> policy_pb2.GenerateResponse | None:
    try:
        return generate(stub, timeout_s=5)
    except grpc.RpcError:
        return None


def test_up_restarts_a_killed_service_with_backoff_and_stops_only_on_sigterm(fault_store, broker, tmp_path):
    offset = free_port_offset()
    policy_addr = f"127.0.0.1:{SERVICE_PORTS['policy'][0] + offset}"
    out_path = tmp_path / "up.out"
    command = [
        sys.executable, "-m", "rlhf_cli.main", "up",
        "--model-store", str(fault_store), "--kafka", broker.bootstrap,
        "--services", "policy,feedback", "--port-offset", str(offset), "--log-dir", str(tmp_path / "logs"),
        "--restart-backoff-s", "0.5", "--restart-backoff-max-s", "4",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "300", "RLHF_HOST": "127.0.0.1"}
    with open(out_path, "wb") as out:
        up = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)

    def output() -> str:
        return out_path.read_text(errors="replace")

    ch = channel(policy_addr)
    stub = policy_pb2_grpc.PolicyServiceStub(ch)
    try:
        wait_until(lambda: "stack is up" in output() or up.poll() is not None, 240, 0.2, "the stack to come up")
        assert up.poll() is None, output()
        assert generate(stub).model_version == "v1"

        # kill -9 while `rlhf up` itself is stopped, so nothing restarts the policy before we look.
        up.send_signal(signal.SIGSTOP)
        try:
            os.kill(children(up.pid)["policy"], signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as down:
                generate(stub, timeout_s=10)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            up.send_signal(signal.SIGCONT)
        wait_until(lambda: answers(stub), 180, 0.5, f"the policy to answer again\n{output()}")
        assert "policy exited (signal SIGKILL)" in output() and "policy restarted (restart 1" in output()
        assert generate(stub).model_version == "v1", "the restarted replica serves CURRENT"

        # A policy that cannot start (CURRENT names a version that is not there) crash-loops:
        # each restart waits twice as long as the one before, up to the 4 s cap.
        current = fault_store / "policy" / "CURRENT"
        current.write_text("v9\n")
        os.kill(children(up.pid)["policy"], signal.SIGKILL)

        def delays() -> list[float]:
            found = re.findall(r"policy exited \(.*?\) after \d+ s; restart \d+ in ([\d.]+) s", output())
            return [float(d) for d in found]

        wait_until(lambda: delays().count(4.0) >= 2, 300, 0.5, f"the policy's crash loop at the cap\n{output()}")
        backoffs = delays()
        assert backoffs[0] == 0.5 and all(b == min(4.0, 2 * a) for a, b in zip(backoffs, backoffs[1:])), backoffs
        assert "policy exited (code 1)" in output()
        current.write_text("v1\n")  # fixed: the next restart comes up
        wait_until(lambda: answers(stub), 180, 0.5, f"the policy to answer after the crash loop\n{output()}")
        restarts = len(re.findall(r"policy restarted", output()))
        assert up.poll() is None, "the stack never stopped by itself"
        assert "feedback exited" not in output(), "only the policy was restarted"

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=120) == 0, output()
        final = output()
        assert "stopped: feedback (0), policy (0)" in final
        assert f"restarts: policy {restarts}, feedback 0" in final
        write_report("up_restarts", {"policy_restarts": restarts, "backoffs_s": backoffs, "exit_code": 0})
    finally:
        ch.close()
        if up.poll() is None:
            up.send_signal(signal.SIGCONT)
            up.terminate()
            up.wait(timeout=60)
