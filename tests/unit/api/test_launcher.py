from api import launcher


def test_one_pinned_worker_per_device():
    procs = launcher.gpu_workers("0,1,3")
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in procs] == ["0", "1", "3"]
    for p, dev in zip(procs, ["0", "1", "3"]):
        argv = " ".join(p.argv)
        assert "-Q gpu" in argv and "-c 1" in argv and f"-n gpu{dev}@%h" in argv and "-E" in p.argv


def test_cpu_fallback_when_no_cuda(monkeypatch):
    monkeypatch.setattr(launcher, "count_devices", lambda: 0)
    (proc,) = launcher.gpu_workers(None)
    assert proc.env["CUDA_VISIBLE_DEVICES"] == "" and "-Q" in proc.argv and "gpu" in proc.argv


def test_device_count_runs_in_a_child_process():
    assert launcher.count_devices() >= 0  # this process stays free of CUDA
    import torch

    assert not torch.cuda.is_initialized()


def test_prefetch_is_one_unless_asked():
    (default,) = launcher.gpu_workers("0")
    assert "--prefetch-multiplier" not in default.argv  # the app's setting: 1 (contract 3)
    (ahead,) = launcher.gpu_workers("0", prefetch=2)
    assert ahead.argv[ahead.argv.index("--prefetch-multiplier") + 1] == "2"


def test_a_child_dies_with_its_parent_even_a_sigkilled_one(tmp_path):
    """The supervisor's children ask for SIGKILL when it dies (PR_SET_PDEATHSIG), so none can outlive it."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", (
        "import functools, os, subprocess, sys, time\n"
        "from shared.orphans import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
        "                         preexec_fn=functools.partial(die_with_parent, os.getpid()))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n")], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.ppid() == parent.pid
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_embedded_valkey_command(tmp_path):
    proc = launcher.valkey(6399, tmp_path / "redis")
    assert proc.name == "valkey" and proc.argv[0].endswith("valkey-server")
    args = " ".join(proc.argv[1:])
    assert "--port 6399" in args and "--bind 127.0.0.1" in args and "--appendonly yes" in args
    assert f"--dir {tmp_path / 'redis'}" in args and (tmp_path / "redis").is_dir()


def test_gpu_worker_runs_its_batches_in_the_process_the_supervisor_watches():
    """Solo pool: a crash of the model-holding process ends the worker, which the supervisor restarts (a prefork
    parent would kill a child that loads models for longer than worker_proc_alive_timeout, over and over)."""
    for proc in launcher.gpu_workers("0,1"):
        assert proc.argv[proc.argv.index("-P") + 1] == "solo"


def test_the_reconciler_has_its_own_consumer_and_the_beat():
    from shared.tasks import HOUSEKEEPING, RECONCILE, app

    house = launcher.housekeeping_worker()
    ingest = launcher.ingest_worker(2)
    assert house.argv[house.argv.index("-Q") + 1] == HOUSEKEEPING and "-B" in house.argv
    assert "-B" not in ingest.argv and HOUSEKEEPING not in ingest.argv[ingest.argv.index("-Q") + 1]
    assert app.amqp.router.route({}, RECONCILE)["queue"].name == HOUSEKEEPING
    entry = app.conf.beat_schedule["reconcile"]
    assert entry["options"]["queue"] == HOUSEKEEPING and entry["options"]["expires"] <= entry["schedule"]


def test_every_visible_device_gets_its_own_worker(monkeypatch):
    """No SPEECHQ_GPU_DEVICES: one worker per device the (faked) driver reports, each pinned to its own."""
    monkeypatch.setattr(launcher, "count_devices", lambda: 4)
    procs = launcher.gpu_workers(None)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in procs] == ["0", "1", "2", "3"]
    assert len({p.name for p in procs}) == 4 and all("-Q gpu" in " ".join(p.argv) for p in procs)


def test_the_api_is_served_with_the_request_head_deadline():
    """uvicorn's own protocols never time out a request head that trickles in (api/limits.HeaderDeadline)."""
    import importlib

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    argv = launcher.api("127.0.0.1", 8000).argv
    module, name = argv[argv.index("--http") + 1].split(":")
    assert issubclass(getattr(importlib.import_module(module), name), HttpToolsProtocol)


def test_two_workers_on_one_device_get_distinct_names():
    procs = launcher.gpu_workers("0,0,1")
    assert [p.name for p in procs] == ["gpu0-0", "gpu0-1", "gpu1"]
    nodes = [p.argv[p.argv.index("-n") + 1] for p in procs]
    assert len(set(nodes)) == 3 and [p.env["CUDA_VISIBLE_DEVICES"] for p in procs] == ["0", "0", "1"]
