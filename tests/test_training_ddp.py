"""`stedge train` under torchrun: 2 processes on the CPU (gloo, DDP through transformers.Trainer)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: Path, *args: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtimes" / "python")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "stedge.cli",
        "train",
        "--config",
        str(config),
        "--device",
        "cpu",
        "--json",
        *args,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count('"output"') == 1, "only the first process prints the summary"
    return json.loads(r.stdout)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_save_one_model_and_resume(tiny_model, tmp_path):
    import torch

    rows = [f"anchor {i}\tpositive text {i} about topic {i % 7}" for i in range(48)]
    (tmp_path / "pairs.tsv").write_text("anchor\tpositive\n" + "\n".join(rows) + "\n")

    def config(name: str, steps: int) -> Path:
        cfg = {
            "model": str(tiny_model),
            "output": str(tmp_path / name),
            "train_data": str(tmp_path / "pairs.tsv"),
            "loss": "mnrl",
            "args": {
                "max_steps": steps,
                "per_device_train_batch_size": 4,
                "save_steps": 2,
                "lr_scheduler_type": "constant",
                "warmup_ratio": 0.0,
                "learning_rate": 1e-3,
                "seed": 7,
            },
        }
        path = tmp_path / f"{name}-{steps}.json"
        path.write_text(json.dumps(cfg))
        return path

    first = _torchrun(config("run", 2), "--keep-checkpoints")
    ckpt = tmp_path / "run_checkpoints" / "checkpoint-2"
    assert first["steps"] == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [] and (tmp_path / "run" / "modules.json").is_file()
    start = _weights(tiny_model)
    after2 = _weights(tmp_path / "run")
    assert any(not torch.equal(start[k], after2[k]) for k in start), "training changed no weight"

    resumed = _torchrun(config("run", 4), "--resume", "--overwrite")
    assert resumed["steps"] == 4 and not (tmp_path / "run_checkpoints").exists()
    _torchrun(config("straight", 4))
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "straight")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["run", "straight"]
