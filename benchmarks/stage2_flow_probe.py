"""Does stage 2 lower the diffusion loss below the frozen backbone's, with and without cameras?

Stage-2 variants trained from a finished demo's stage-1 checkpoint (``fantasyworld demo --out
DEMO``), each a set of ``loss`` overrides of the demo's stage-2 config, then scored with
:func:`learn_report.diffusion_losses` (the flow-matching MSE of ``benchmarks/learn_gpu.py``'s
diffusion bar) on the demo's held-out clips and on as many of its training clips::

    python benchmarks/stage2_flow_probe.py --demo demo_output --steps 400 \\
        --variants "camera_weight=30,camera_dropout=0.5,shift=1;lambda_geo=0.1,camera_dropout=0.5,shift=1"

One JSON line per variant: its overrides, training seconds and, per split (``held_out``,
``train``), the mean MSE of the stage-2 model with the clips' cameras, without them, and of the
frozen backbone, each also per noise level (``--sigmas``). Runs go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import learn_report  # noqa: E402

from fantasyworld.data.formats import load_metadata  # noqa: E402
from fantasyworld.demo import ASSETS, DemoConfig, _train_config, cache_training_worlds  # noqa: E402
from fantasyworld.inference.pipeline import FantasyWorldPipeline  # noqa: E402
from fantasyworld.training.trainer import Trainer  # noqa: E402

__all__ = ["main", "parse_variant", "probe"]

#: ``loss`` keys a variant may override
LOSS_KEYS = ("lambda_geo", "camera_weight", "camera_dropout", "shift", "alpha")


def parse_variant(text: str) -> dict[str, float]:
    """``"camera_weight=30,shift=1"`` -> ``{"camera_weight": 30.0, "shift": 1.0}`` (keys of :data:`LOSS_KEYS`)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in LOSS_KEYS:
            raise ValueError(f"variant item {item!r}: expected KEY=VALUE with KEY one of {', '.join(LOSS_KEYS)}")
        out[key] = float(value)
    return out


def probe(demo: Path, work: Path, steps: int, variants: list[dict[str, float]], clips: int,
          sigmas: tuple[float, ...], seed: int = 0) -> list[dict[str, Any]]:
    """Train and score each variant (module docstring); returns the rows it prints."""
    summary = json.loads((demo / "demo.json").read_text())
    cfg0 = DemoConfig(**{k: v for k, v in summary["config"].items() if k in DemoConfig.__dataclass_fields__})
    worlds, train_root = demo / "data" / "worlds", demo / "data" / "train"
    init = Path(summary["runs"]["stage1"]["checkpoint"])
    cache = cache_training_worlds(train_root, demo / "data" / "cache", cfg0)  # made by the demo (older: here)
    splits = {"held_out": summary["held_out_clips"][:clips],
              "train": [r.clip_id for r in load_metadata(train_root)][:clips]}
    rows = []
    for n, overrides in enumerate(variants):
        cfg = DemoConfig(**{**cfg0.__dict__, "stage2_steps": steps, "stage2_seconds": None, "progress": False})
        tc = _train_config(cfg, 2, cache, work / f"variant{n}", init)
        for key, value in overrides.items():
            setattr(tc.loss, key, value)
        tc.validate()
        start = time.perf_counter()
        result = Trainer(tc).train()
        row: dict[str, Any] = {"variant": overrides, "steps": result.step,
                               "train_seconds": round(time.perf_counter() - start, 1)}
        pipe = FantasyWorldPipeline.from_pretrained(result.last_checkpoint, backbone=str(ASSETS / "backbone"),
                                                    vae=str(ASSETS / "vae"), text_encoder="tiny", device="cpu")
        for split, ids in splits.items():
            d = learn_report.diffusion_losses(pipe, ASSETS / "backbone", worlds, ids, sigmas, seed,
                                              cfg.num_frames, cfg.size)
            names = ("stage2_camera", "stage2_no_camera", "frozen_backbone")
            row[split] = {name: round(d[name], 5) for name in names}
            row[split]["per_sigma"] = {name: [round(x, 4) for x in d["per_sigma"][name]] for name in names}
            row[split]["clips"] = len(ids)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="a finished `fantasyworld demo --out` folder")
    p.add_argument("--work", default=None, help="run folders (default: DEMO/flow_probe)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--variants", default="camera_dropout=0.5,shift=1",
                   help="';'-separated variants, each ','-separated loss overrides KEY=VALUE")
    p.add_argument("--clips", type=int, default=16, help="clips per split")
    p.add_argument("--sigmas", default="0.1,0.3,0.5,0.7,0.9")
    a = p.parse_args(argv)
    demo = Path(a.demo)
    if not (demo / "demo.json").is_file():
        raise SystemExit(f"{demo / 'demo.json'}: not found; run `fantasyworld demo --out {demo}` first")
    variants = [parse_variant(v) for v in a.variants.split(";") if v.strip()]
    sigmas = tuple(float(s) for s in a.sigmas.split(","))
    return probe(demo, Path(a.work or demo / "flow_probe"), a.steps, variants, a.clips, sigmas)


if __name__ == "__main__":
    main()
