"""What a finished demo's camera head reads and predicts, and what the prompt alone would give.

One command on the output folder of ``fantasyworld demo`` (CPU, about half a minute)::

    python benchmarks/camera_head_probe.py --demo demo_output --out camera_head_probe.json

It loads the demo's stage-1 checkpoint (or ``--checkpoint``) with the tiny VAE and backbone the
demo ran with (``demo.json``'s ``assets``, or ``--assets``; the shipped ones if neither) and
runs the ``latents`` mode of the evaluation (sigma ``--sigma``, the clip's own prompt) on
``--clips`` training worlds and on the evaluated held-out worlds. It prints:

* **spread**: the standard deviation across training clips of each of the 9 pose-encoding
  components (``[t_xyz, q_xyzw, fov_h, fov_w]``, relative to frame 0, mean over frames), of
  the prediction and of the ground truth. A camera head that reads its input spreads its
  predictions as the cameras spread; one that predicts a prior does not;
* **inputs**: the same spread of the camera head's input (the last geometry layer's camera
  tokens) and of its intermediate activations, relative to their mean magnitude;
* **prompt**: how much the prediction and the bridge input (the PCB output the geometry
  branch reads) change when the prompt's ``left`` and ``right`` are swapped, or the prompt
  is empty (the synthetic prompts name the camera motion: "The camera turns to the left.");
* **prompt medoid**: a baseline that reads only the prompt's last sentence (the motion and
  its direction): it predicts, for every held-out clip, the relative cameras of the training
  clip whose cameras are closest (mean pairwise rotation error) to those of the other
  training clips with the same sentence. Its ``rot_err`` against identity poses' says how
  much of the rotation bar the prompt alone carries.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fantasyworld.data.loader import RawClipDataset  # noqa: E402
from fantasyworld.eval.checkpoints import inspect_checkpoint, load_pipeline  # noqa: E402
from fantasyworld.eval.evaluate import predict_from_latents  # noqa: E402
from fantasyworld.eval.metrics import pairwise_pose_errors  # noqa: E402
from fantasyworld.geometry.cameras import relative_to_first  # noqa: E402
from fantasyworld.geometry.pose_encoding import encode_pose  # noqa: E402

ASSETS = ROOT / "fantasyworld" / "assets" / "tiny"
SWAP = {"left": "right", "right": "left"}


def swapped_prompt(prompt: str) -> str:
    """``prompt`` with ``left`` and ``right`` exchanged (punctuation kept)."""
    words = []
    for word in prompt.split(" "):
        core = word.rstrip(".,")
        words.append(SWAP.get(core, core) + word[len(core):])
    return " ".join(words)


def rot_err(pred_w2c: np.ndarray, gt_w2c: np.ndarray) -> float:
    """Mean pairwise relative rotation error in degrees (the evaluation's ``rot_err``)."""
    return float(np.mean(pairwise_pose_errors(pred_w2c, gt_w2c)[0]))


class Probe:
    """The demo's model with hooks on the camera head and the latent bridge."""

    def __init__(self, checkpoint: Path, sigma: float, assets: Path = ASSETS) -> None:
        self.pipe = load_pipeline(inspect_checkpoint(checkpoint), backbone=str(assets / "backbone"),
                                  vae=str(assets / "vae"), text_encoder="tiny", device="cpu")
        self.model, self.sigma = self.pipe.model, sigma
        head = self.model.geometry.camera_head
        self.captured: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        head.register_forward_hook(self._keep("camera_tokens", output=False))
        head.token_norm.register_forward_hook(self._keep("token_norm"))
        head.trunk_norm.register_forward_hook(self._keep("trunk_norm"))
        head.pose_branch.register_forward_hook(self._keep("pose_delta"))
        self.model.geometry.projection_head.register_forward_hook(self._keep("bridge_input", output=False))

    def _keep(self, name: str, output: bool = True):
        def hook(module, args, out) -> None:
            self.captured[name].append((out if output else args[0]).detach().clone())
        return hook

    def run(self, sample: dict[str, Any], prompt: str) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """The evaluation's ``latents``-mode prediction of ``sample`` under ``prompt`` (stage 1, seed 0:
        ``pose_enc`` ``(T, 9)``, ``w2c`` ``(T, 4, 4)``, ...) and what the hooks saw (each the first
        call's, or the refinement iterations stacked)."""
        self.captured.clear()
        out = predict_from_latents(self.pipe, dict(sample, prompt=prompt), self.sigma, 0, 1)
        seen = {k: torch.stack(v) if len(v) > 1 else v[0] for k, v in self.captured.items()}
        return out, seen


def spread(values: list[np.ndarray | torch.Tensor]) -> tuple[float, float]:
    """``(std across clips, mean magnitude)`` of equally shaped arrays, both averaged over entries."""
    a = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    return float(a.std(0).mean()), float(np.abs(a).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="output folder of fantasyworld demo")
    p.add_argument("--checkpoint", default=None, help="default: the demo's last stage-1 checkpoint")
    p.add_argument("--clips", type=int, default=24, help="training clips for the spreads")
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--assets", default=None, help="tiny VAE/backbone folder (default: the demo's, from demo.json)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = p.parse_args()
    demo = Path(a.demo)
    config = json.loads((demo / "demo_config.json").read_text())
    frames, size = config["num_frames"], config["size"]
    checkpoint = Path(a.checkpoint) if a.checkpoint else max(
        (demo / "runs" / "stage1").glob("step-*.safetensors"), key=lambda f: int(f.stem.split("-")[1]))
    held = list(json.loads((demo / "evaluation" / "metrics.json").read_text())["per_clip"])
    worlds = RawClipDataset(demo / "data" / "worlds", num_frames=frames, height=size, width=size)
    train = RawClipDataset(demo / "data" / "train", num_frames=frames, height=size, width=size)
    ran_with = json.loads((demo / "demo.json").read_text()).get("assets") if (demo / "demo.json").is_file() else None
    assets = Path(a.assets or ran_with or ASSETS)
    probe = Probe(checkpoint, a.sigma, assets)
    res: dict[str, Any] = {"checkpoint": str(checkpoint), "sigma": a.sigma, "assets": str(assets)}

    # 1. spread of predictions, ground truth and the head's activations over training clips
    picks = np.linspace(0, len(train) - 1, min(a.clips, len(train))).round().astype(int)
    pred, gt, acts, runs = [], [], collections.defaultdict(list), []
    for i in picks:
        sample = train[int(i)]
        out, seen = probe.run(sample, sample["prompt"])
        runs.append((sample, out, seen))  # the first 8 are reused by the prompt check below
        pred.append(out["pose_enc"])
        rel = relative_to_first(sample["w2c"][None].float())
        gt.append(encode_pose(rel, sample["intrinsics"][None].float(), (size, size))[0].double().numpy())
        for k, v in seen.items():
            acts[k].append(v.double().numpy())
    res["spread"] = {"components": ["tx", "ty", "tz", "qx", "qy", "qz", "qw", "fov_h", "fov_w"],
                     "prediction": np.stack(pred).std(0).mean(0).tolist(),
                     "ground_truth": np.stack(gt).std(0).mean(0).tolist(), "clips": len(picks)}
    res["inputs"] = {}
    for k, v in acts.items():
        across, magnitude = spread(v)
        res["inputs"][k] = {"std_across_clips": across, "mean_magnitude": magnitude,
                            "relative": across / max(magnitude, 1e-12)}

    # 2. the prompt's effect on the bridge input and the prediction
    rows = []
    for sample, out, seen in runs[:8]:
        row = {"prompt": sample["prompt"].split(". ")[-1]}
        for name, prompt in (("swapped", swapped_prompt(sample["prompt"])), ("empty", "")):
            out2, seen2 = probe.run(sample, prompt)
            x, x2 = seen["bridge_input"], seen2["bridge_input"]
            row[f"bridge_change_{name}"] = float((x2 - x).norm() / x.norm())
            row[f"pose_change_{name}"] = float(np.abs(out2["pose_enc"] - out["pose_enc"]).max())
        rows.append(row)
    res["prompt"] = rows

    # 3. the prompt-medoid baseline on the held-out clips
    where = {r.clip_id: i for i, r in enumerate(worlds.records)}
    sentence = {r.clip_id: r.prompt.split(". ")[-1] for r in worlds.records}
    cams = {c: relative_to_first(worlds[where[c]]["w2c"].double().numpy()) for c in where}
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for r in train.records:
        groups[sentence[r.clip_id]].append(r.clip_id)
    medoid = {}
    for s, ids in groups.items():
        ids = ids[:40]
        scores = [np.mean([rot_err(cams[c], cams[o]) for o in ids if o != c] or [0.0]) for c in ids]
        medoid[s] = ids[int(np.argmin(scores))]
    identity = np.tile(np.eye(4), (frames, 1, 1))
    base = [rot_err(identity, cams[c]) for c in held]
    by_prompt = [rot_err(cams[medoid[sentence[c]]], cams[c]) if sentence[c] in medoid else base[k]
                 for k, c in enumerate(held)]
    model = []
    for c in held:
        sample = worlds[where[c]]
        out, _ = probe.run(sample, sample["prompt"])
        model.append(rot_err(out["w2c"], cams[c]))
    res["held_out_rotation"] = {"clips": len(held), "identity": float(np.mean(base)),
                                "prompt_medoid": float(np.mean(by_prompt)), "model": float(np.mean(model)),
                                "prompt_medoid_ratio": float(np.mean(base) / np.mean(by_prompt)),
                                "model_ratio": float(np.mean(base) / np.mean(model))}

    np.set_printoptions(precision=4, suppress=True)
    s = res["spread"]
    print(f"checkpoint {checkpoint}, {s['clips']} training clips, sigma {a.sigma}")
    print("spread across clips (std per component: tx ty tz qx qy qz qw fov_h fov_w)")
    print("  prediction  ", np.array(s["prediction"]))
    print("  ground truth", np.array(s["ground_truth"]))
    for k, v in res["inputs"].items():
        print(f"  {k:14s} std across clips {v['std_across_clips']:.5f} of mean magnitude {v['mean_magnitude']:.4f}"
              f" ({100 * v['relative']:.2f}%)")
    for row in rows:
        print(f"  prompt {row['prompt'][:48]:48s} swapped: bridge {100 * row['bridge_change_swapped']:.2f}%, pose "
              f"{row['pose_change_swapped']:.5f}; empty: bridge {100 * row['bridge_change_empty']:.2f}%, pose "
              f"{row['pose_change_empty']:.5f}")
    h = res["held_out_rotation"]
    print(f"held-out rotation error ({h['clips']} clips): identity {h['identity']:.2f}, model {h['model']:.2f} "
          f"({h['model_ratio']:.2f}x), prompt medoid {h['prompt_medoid']:.2f} ({h['prompt_medoid_ratio']:.2f}x)")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
