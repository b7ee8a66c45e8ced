"""The launched arm server's lifetime is tied to its client process."""

import os
import signal
import subprocess
import sys
import textwrap
import time

CLIENT = textwrap.dedent(
    """
    import sys, time
    from maskvit_mpc.configs import load_config
    from maskvit_mpc.robot.launch import launch_sim_server
    with launch_sim_server(load_config("default"), backend="dry") as server:
        print(server.process.pid, flush=True)
        time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_server_exits_when_its_client_is_killed():
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(client.stdout.readline())
        assert _alive(server_pid)
        # The server runs in a session of its own, so a terminal's Ctrl-C reaches only the client.
        assert os.getsid(server_pid) != os.getsid(client.pid)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server_pid), "the orphaned arm server kept running"
    finally:
        if client.poll() is None:
            client.kill()
