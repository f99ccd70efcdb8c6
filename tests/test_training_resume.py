"""Kill/resume and SIGTERM through the CLI (tiny preset, CPU, subprocesses).

* A run killed with SIGKILL mid-way and resumed with ``--resume`` reproduces the
  uninterrupted run exactly: the same per-step losses, learning rates and gradient norms
  (bitwise-equal floats) and bitwise-equal final weights.
* The resumed run's saved RNG state equals the uninterrupted run's (restored after the loader draws).
* SIGTERM makes the run write a checkpoint at the current step and exit with status 143.

The three runs start together (one thread each) to use both cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.training import checkpoint as ckpt
from fantasyworld.training.logging import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS = 12


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fantasyworld", "train", "--config", str(CONFIGS / "stage1_tiny.yaml"),
            f"output_dir={out}", f"data.root={data}", "data.num_frames=5", "data.height=32", "data.width=32",
            f"steps={STEPS}", "checkpoint.every=3", "checkpoint.keep_last=2", "log.progress=false",
            "optim.warmup_steps=4", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120.0) -> None:
    start = time.time()
    while len(read_metrics(run_dir)) < step:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"run ended (status {proc.returncode}) before step {step}:\n{out[-3000:]}")
        if time.time() - start > timeout:
            proc.kill()
            pytest.fail(f"run did not reach step {step} in {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("resume")
    data = synthesize_dataset(root / "data", num_clips=4, num_frames=5, height=32, width=32, seed=5, workers=1)
    kw = dict(env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    full = subprocess.Popen(_cmd(data, root / "full"), **kw)
    killed = subprocess.Popen(_cmd(data, root / "killed"), **kw)
    termed = subprocess.Popen(_cmd(data, root / "termed"), **kw)

    _wait_for_step(termed, root / "termed", 2)
    termed.send_signal(signal.SIGTERM)
    _wait_for_step(killed, root / "killed", 7)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_rows = len(read_metrics(root / "killed"))
    killed_ckpts = ckpt.complete_steps(root / "killed")
    term_out, _ = termed.communicate(timeout=120)
    full_out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, full_out[-3000:]

    resumed = subprocess.run(_cmd(data, root / "killed", "--resume"), **{**kw, "stdout": subprocess.PIPE},
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    return {"root": root, "killed_rows": killed_rows, "killed_ckpts": killed_ckpts, "resume_out": resumed.stdout,
            "term_status": termed.returncode, "term_out": term_out}


def test_sigkill_then_resume_reproduces_losses_and_weights_exactly(runs: dict[str, object]) -> None:
    root = runs["root"]
    assert runs["killed_rows"] < STEPS, "the run finished before it was killed"
    assert runs["killed_ckpts"] and runs["killed_ckpts"][-1] < STEPS
    assert f"at step {runs['killed_ckpts'][-1]}" in runs["resume_out"]
    full, resumed = read_metrics(root / "full"), read_metrics(root / "killed")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    keys = ("objective", "loss_depth", "loss_pmap", "loss_camera", "lr", "grad_norm")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    w_full = load_file(str(root / "full" / f"step-{STEPS}.safetensors"))
    w_resumed = load_file(str(root / "killed" / f"step-{STEPS}.safetensors"))
    assert w_full.keys() == w_resumed.keys()
    assert all(torch.equal(w_full[k], w_resumed[k]) for k in w_full)
    # the process RNG is restored after iter(loader) draws its seed: the states saved at the end agree
    rng_full, rng_resumed = ckpt.read_state(root / "full", STEPS)["rng"], ckpt.read_state(root / "killed", STEPS)["rng"]
    assert torch.equal(rng_full[0]["torch"], rng_resumed[0]["torch"])
    # keep_last=2: only the two newest complete checkpoints remain
    assert ckpt.complete_steps(root / "killed") == [9, 12]
    assert not list((root / "killed").glob(".step-*"))  # no temporaries left


def test_sigterm_writes_checkpoint_and_exits_cleanly(runs: dict[str, object]) -> None:
    root = runs["root"] / "termed"
    assert runs["term_status"] == 128 + signal.SIGTERM == 143, runs["term_out"][-3000:]
    assert "SIGTERM" in runs["term_out"]
    last = read_metrics(root)[-1]["step"]
    assert last < STEPS
    assert ckpt.latest_complete_step(root) == last
    state = ckpt.read_state(root, last)
    assert state["step"] == last and state["samples_seen"] == last * 2
