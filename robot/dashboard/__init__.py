"""The operator dashboard: a local web page that shows a run and stops the arm.

``mpc-dashboard`` (:mod:`.server`) is its own process: it subscribes to the telemetry a run publishes
(:mod:`maskvit_mpc.robot.telemetry`), serves the page on 127.0.0.1, sends E-STOP straight to the arm
server and pause / resume to the run. :mod:`.launch` is what ``mpc-run --dashboard`` and
``collect-finetune-data --dashboard`` use to start it. See ``docs/dashboard.md``.
"""
