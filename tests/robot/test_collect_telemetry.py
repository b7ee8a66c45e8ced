"""collect-finetune-data under the dashboard: progress telemetry, and a pause mid-episode that drops the
episode and records it again (simulated arm server, real sockets)."""

from __future__ import annotations

import logging
import re
import threading
import time

import zmq
from maskvit_mpc.configs import load_config
from maskvit_mpc.robot import episodes as ep_io
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.collect import Collector
from maskvit_mpc.robot.launch import launch_sim_server
from maskvit_mpc.robot.telemetry import RunMonitor, control_request, decode_message
from maskvit_mpc.robot.zmq_camera import ZmqCamera


def test_collection_reports_progress_and_a_pause_redoes_the_episode(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cfg = load_config("default", ["collect.episode_steps=30", "collect.record_segmentation=false"])
    with launch_sim_server(cfg) as server, ZmqArm(server.bridge) as arm, ZmqCamera(server.bridge) as camera:
        monitor = RunMonitor("collect-finetune-data", arm_endpoint=server.command_endpoint)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(monitor.endpoint)
        seen: list[tuple[str, dict]] = []
        stop = threading.Event()

        def watch_and_pause() -> None:
            paused = False
            while not stop.is_set():
                if not sub.poll(50):
                    continue
                topic, body = decode_message(sub.recv_multipart())
                seen.append((topic, body))
                if not paused and topic == "collect" and body.get("episode_step", 0) >= 3:
                    paused = True  # the operator pauses in the middle of the first episode
                    control_request(monitor.control.endpoint, "pause")
                    time.sleep(0.3)
                    control_request(monitor.control.endpoint, "resume")

        watcher = threading.Thread(target=watch_and_pause, daemon=True)
        watcher.start()
        try:
            time.sleep(0.3)  # the subscription reaches the publisher
            collector = Collector(
                cfg,
                arm,
                monitor.watch(camera),
                tmp_path,
                sim=True,
                target_episodes=2,
                progress=False,
                monitor=monitor,
            )
            summary = collector.run()
            time.sleep(0.8)  # one retained re-send period
        finally:
            stop.set()
            watcher.join(5)
            sub.close()
            ctx.term()
            monitor.close()
    assert summary.completed and summary.episodes_total == 2
    assert any(
        "paused at step" in r.getMessage() and "recording it again" in r.getMessage() for r in caplog.records
    )
    files = ep_io.episode_files(tmp_path)
    assert len(files) == 2
    assert all(ep_io.validate_episode(f)["frames"] == 31 for f in files)  # whole episodes only
    phases = [body.get("phase") for topic, body in seen if topic == "status"]
    assert "paused" in phases and "collecting" in phases
    progress = [body for topic, body in seen if topic == "collect" and "episodes_total" in body]
    assert progress[-1]["episodes_total"] == 2 and progress[-1]["value"] == 2 and progress[-1]["unit"] == "ep"
    assert any(topic == "frame" for topic, _ in seen)


def test_dashboard_flag_on_collect(tmp_path, capsys):
    from maskvit_mpc.robot import collect

    argv = ["--sim", "--episodes", "1", "--episode-steps", "3", "--no-progress", "--out", str(tmp_path / "d")]
    assert collect.main([*argv, "--dashboard", "--dashboard-port", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"operator dashboard: http://127\.0\.0\.1:\d+/  \(control token: \S+\)", out), out
    assert "collection complete" in out
    assert len(ep_io.episode_files(tmp_path / "d")) == 1
