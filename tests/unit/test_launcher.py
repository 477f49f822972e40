from workers import launcher


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
