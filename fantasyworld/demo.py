"""``fantasyworld demo``: the whole method on a CPU in minutes, in one folder.

Steps (each prints a header with the elapsed time; training shows its progress bar):

1. **Worlds**: :func:`~fantasyworld.data.synth.synthesize_dataset` renders ``num_clips``
   procedural worlds (seed 0) into ``OUT/data/worlds``; the held-out split of
   :mod:`fantasyworld.data.split` (clip-id hash) is set aside and the other clips are linked
   into ``OUT/data/train``; their latent cache (:func:`~fantasyworld.data.cache.build_cache`:
   the tiny VAE's latents, the tiny text encoder's embeddings, the geometry) goes to
   ``OUT/data/cache``, the only data training reads.
2. **Stage 1** (geometry branch on the frozen backbone) and 3. **stage 2** (plus the
   interaction and camera modules and the diffusion loss), both with the project's trainer
   (:class:`~fantasyworld.training.trainer.Trainer`) on the ``tiny`` preset from the cache
   held in memory (``data.cache_on_device``: the same objective as encoding the videos at
   every step, at twice the step rate), into ``OUT/runs/stage1`` and ``OUT/runs/stage2``.
4. **Generation** along a camera path that no training clip has (:data:`DEMO_CAMERA`, a
   named path) with the prompt of a held-out world: video, depth, points, cameras,
   COLMAP files and the pipeline's report in ``OUT/generation``.
5. **Evaluation** on the held-out worlds (:func:`fantasyworld.eval.evaluate.evaluate`:
   from the clips' latents and from generation along their cameras, against ground truth
   and trivial baselines) into ``OUT/evaluation``.
6. ``OUT/report.html`` (open this first) ties it together; ``OUT/demo.json`` has the
   settings, the timings and the acceptance verdict.

The backbone and VAE are the pretrained tiny ones shipped in
``fantasyworld/assets/tiny`` (``scripts/pretrain_tiny_backbone.py``; docs/evaluation.md
says how they were trained); the text encoder is the seeded random tiny UMT5. Nothing is
downloaded.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fantasyworld.errors import Interrupted, OutputError, check_output_dir, interrupt_on_signals, staged_output_dir

#: Pretrained tiny VAE and backbone (``scripts/pretrain_tiny_backbone.py``).
ASSETS = Path(__file__).resolve().parent / "assets" / "tiny"
#: The generation's camera: a named path (:mod:`fantasyworld.inference.trajectories`) that
#: is not one of the synthetic trajectory families the model is trained on.
DEMO_CAMERA = "orbit-right:50"


@dataclass
class DemoConfig:
    """Settings of one demo run (defaults: the full demo; :meth:`smoke` for tests).

    Attributes:
        num_clips: worlds rendered; about ``held_out_fraction`` of them are held out.
        num_frames, size: clip length (``4k + 1``) and square resolution (multiple of 16).
        trajectory_frames: each world's clip is a ``num_frames`` window of a camera path this
            long (a short clip cut from a longer video); ``None``: the path spans the clip.
        stage1_steps, stage2_steps: optimizer steps of each stage (batch ``batch_size``).
        stage1_seconds, stage2_seconds: wall-clock budget of each stage's steps (the trainer's
            ``time_budget_s``): where the steps do not fit (a slow or busy machine) the stage
            plans as many as do, from the rate of its first steps, and ends on time; ``None``:
            all the steps, however long they take.
        lr: peak learning rate of both stages (the 1.3B recipe's 1e-5 is far too small here).
        shift: timestep shift of the training noise levels. Below 1 it favours low noise:
            geometry is read from the latents, and the evaluation and the generation's
            heads run at low noise (``eval_sigma``, the sampler's last step).
        camera_weight: weight of the camera loss in the geometry sum (paper: 3).
        eval_sigma: noise level of the evaluation's ``latents`` mode.
        gen_steps: Euler steps of every generation (the showcase and the evaluation's).
        max_eval_clips: cap on held-out clips evaluated (``None``: all).
        curriculum: stage 1's ``data.curriculum.measure`` (``rotation``, ``translation``; ``None``:
            off), with ``curriculum_start`` and ``curriculum_ramp_steps`` as its ``start_fraction``
            and ``ramp_steps`` (docs/evaluation.md: measured, not the default).
    """

    num_clips: int = 400
    held_out_fraction: float = 0.2
    num_frames: int = 9
    trajectory_frames: int | None = None
    size: int = 32
    stage1_steps: int = 1500
    stage2_steps: int = 200
    stage1_seconds: float | None = 420.0
    stage2_seconds: float | None = 70.0
    batch_size: int = 4
    lr: float = 3e-3
    warmup_steps: int = 20
    shift: float = 0.5
    camera_weight: float = 3.0
    eval_sigma: float = 0.05
    gen_steps: int = 20
    max_eval_clips: int | None = 16
    curriculum: str | None = None
    curriculum_start: float = 0.25
    curriculum_ramp_steps: int = 600
    seed: int = 0
    camera: str = DEMO_CAMERA
    progress: bool = True

    @classmethod
    def smoke(cls) -> DemoConfig:
        """A seconds-long configuration that still writes every file (tests)."""
        return cls(num_clips=4, held_out_fraction=0.25, num_frames=5, trajectory_frames=None, stage1_steps=2,
                   stage2_steps=2, stage1_seconds=None, stage2_seconds=None,
                   batch_size=1, warmup_steps=0, gen_steps=2, max_eval_clips=1, progress=False)


def _say(msg: str, t0: float) -> None:
    print(f"[demo {time.perf_counter() - t0:6.1f} s] {msg}", flush=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_train_root(worlds: Path, train_root: Path, train_ids: list[str]) -> Path:
    """A dataset root holding only ``train_ids`` of ``worlds`` (files hard-linked, else copied)."""
    from fantasyworld.data.formats import METADATA_NAME

    meta = json.loads((worlds / METADATA_NAME).read_text())
    keep = set(train_ids)
    clips = [c for c in meta["clips"] if c["clip_id"] in keep]
    for rec in clips:
        for key in ("video", "depth", "points", "cameras"):
            src = worlds / rec[key]
            if src.is_dir():
                for f in src.iterdir():
                    _link_or_copy(f, train_root / rec[key] / f.name)
            else:
                _link_or_copy(src, train_root / rec[key])
    train_root.mkdir(parents=True, exist_ok=True)
    (train_root / METADATA_NAME).write_text(json.dumps({**meta, "clips": clips}, indent=1) + "\n")
    return train_root


def cache_training_worlds(train_root: Path, cache: Path, cfg: DemoConfig) -> Path:
    """The latent cache the demo trains from (``data cache`` of ``train_root`` with the shipped
    tiny VAE and the tiny text encoder into ``cache``); clips already encoded are kept, the
    index is written last, so an interrupted cache completes on the next call."""
    from fantasyworld.data.cache import build_cache

    return build_cache(train_root, cache, ASSETS / "vae", "tiny", num_frames=cfg.num_frames, height=cfg.size,
                       width=cfg.size, batch_size=16)


def _train_config(cfg: DemoConfig, stage: int, cache: Path, run_dir: Path, init_from: Path | None) -> Any:
    from fantasyworld.training.config import config_from_dict

    steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
    data = {
        "stage": stage, "output_dir": str(run_dir), "steps": steps, "resume": True, "batch_size": cfg.batch_size,
        "time_budget_s": cfg.stage1_seconds if stage == 1 else cfg.stage2_seconds,
        "grad_accum": 1,
        "seed": cfg.seed, "device": "cpu", "mixed_precision": "fp32", "max_nonfinite_steps": 5,
        "model": {"preset": "tiny", "backbone_dir": str(ASSETS / "backbone"), "gradient_checkpointing": False},
        "data": {"cache_dir": str(cache), "num_frames": cfg.num_frames, "height": cfg.size, "width": cfg.size,
                 "cache_on_device": True},
        "optim": {"lr": cfg.lr, "weight_decay": 0.01, "warmup_steps": cfg.warmup_steps, "grad_clip": 1.0},
        "loss": {"lambda_geo": 1.0, "alpha": 0.2, "shift": cfg.shift, "camera_weight": cfg.camera_weight},
        "checkpoint": {"every": max(steps, 1), "keep_last": 1},
        "log": {"every": 1, "tensorboard": False, "progress": cfg.progress},
    }
    if stage == 1 and cfg.curriculum is not None:
        data["data"]["curriculum"] = {"measure": cfg.curriculum, "start_fraction": cfg.curriculum_start,
                                      "ramp_steps": cfg.curriculum_ramp_steps}
    if init_from is not None:
        data["init_from"] = str(init_from)
    return config_from_dict(data)


CONFIG_NAME = "demo_config.json"


def _is_demo_folder(out: Path) -> bool:
    return (out / "demo.json").is_file() or (out / CONFIG_NAME).is_file() or (out / "runs").is_dir()


def _prepare_out(out: Path, cfg: DemoConfig, resume: bool, overwrite: bool) -> None:
    """Refuse, clear or keep ``out`` (see :func:`run_demo`); writes ``OUT/demo_config.json``."""

    check_output_dir(out, "--out")
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    if out.is_dir() and any(out.iterdir()):
        if not _is_demo_folder(out):
            raise OutputError(f"--out {out}: exists and is not a demo folder: choose another --out")
        if resume:
            saved_path = out / CONFIG_NAME
            saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
            if saved is not None:  # a key added since that demo was written has its default (the old behaviour)
                defaults = {k: v for k, v in asdict(DemoConfig()).items() if k != "progress"}
                saved = {**defaults, **saved}
            if saved != settings:
                changed = sorted(k for k in settings if saved is None or saved.get(k) != settings[k])
                raise OutputError(f"--out {out}: --resume needs the settings of the stopped demo ({saved_path} "
                                  f"differs in {', '.join(changed) or 'every key'})")
            return
        if not overwrite:
            raise OutputError(f"--out {out}: holds an earlier demo; pass --overwrite to replace it, or --resume "
                              f"to continue a stopped one")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(settings, indent=1) + "\n")


def run_demo(out_dir: str | Path = "demo_output", config: DemoConfig | None = None, *, resume: bool = False,
             overwrite: bool = False) -> dict[str, Any]:
    """Run the demo (module docstring) into ``out_dir``; returns the ``demo.json`` dict.

    A non-empty ``out_dir`` is refused unless ``overwrite`` (an earlier demo folder is then
    deleted first) or ``resume``: a demo stopped by SIGTERM / SIGINT (which raise
    :class:`~fantasyworld.errors.Interrupted`, exit code 143 / 130) continues where it
    stopped: the worlds are kept once complete, each training stage resumes from its newest
    checkpoint (bit-identical to an uninterrupted run), generation and evaluation are redone
    (each folder is swapped in whole). ``resume`` needs the same settings (``demo_config.json``).
    """
    cfg = config or DemoConfig()
    out = Path(out_dir)
    _prepare_out(out, cfg, resume, overwrite)
    with interrupt_on_signals("the demo"):
        return _run(out, cfg)


def _run(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    import torch

    from fantasyworld.data.formats import METADATA_NAME, load_metadata
    from fantasyworld.data.split import split_clip_ids
    from fantasyworld.data.synth import synthesize_dataset
    from fantasyworld.eval.evaluate import EvalSettings, evaluate
    from fantasyworld.inference.pipeline import FantasyWorldPipeline
    from fantasyworld.training.device_cache import release_device_cache
    from fantasyworld.training.logging import read_metrics
    from fantasyworld.training.trainer import STOP_SIGNALS, Trainer

    t0 = time.perf_counter()
    if not (ASSETS / "backbone").is_dir() or not (ASSETS / "vae").is_dir():
        raise FileNotFoundError(f"{ASSETS}: the pretrained tiny backbone/VAE are missing "
                                f"(run scripts/pretrain_tiny_backbone.py --out {ASSETS})")
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    # 1. worlds and the split (kept on --resume once the training root is complete: it is written last)
    start = time.perf_counter()
    worlds = out / "data" / "worlds"
    if (out / "data" / "train" / METADATA_NAME).is_file():
        _say(f"1/5 keeping the {cfg.num_clips} rendered worlds", t0)
    else:
        _say(f"1/5 rendering {cfg.num_clips} worlds ({cfg.num_frames} frames, {cfg.size}x{cfg.size})", t0)
        shutil.rmtree(out / "data", ignore_errors=True)
        synthesize_dataset(worlds, num_clips=cfg.num_clips, num_frames=cfg.num_frames, height=cfg.size,
                           width=cfg.size, seed=cfg.seed, workers=min(2, os.cpu_count() or 1), progress=cfg.progress,
                           trajectory_frames=cfg.trajectory_frames)
    ids = [r.clip_id for r in load_metadata(worlds)]
    train_ids, held_ids = split_clip_ids(ids, cfg.held_out_fraction)
    if not (out / "data" / "train" / METADATA_NAME).is_file():
        make_train_root(worlds, out / "data" / "train", train_ids)
    timings["worlds"] = time.perf_counter() - start
    shown = ", ".join(held_ids[:8]) + (", ..." if len(held_ids) > 8 else "")
    _say(f"    {len(train_ids)} training worlds, {len(held_ids)} held out ({shown})", t0)
    start = time.perf_counter()
    cache = out / "data" / "cache"
    cache_training_worlds(out / "data" / "train", cache, cfg)
    timings["cache"] = time.perf_counter() - start
    _say(f"    latent cache of the {len(train_ids)} training worlds in {timings['cache']:.1f} s ({cache})", t0)

    # 2./3. training
    runs = {}
    init = None
    for stage in (1, 2):
        start = time.perf_counter()
        run_dir = out / "runs" / f"stage{stage}"
        # resume=True: a fresh start when the stage has no checkpoint, else it continues (or is done)
        config = _train_config(cfg, stage, cache, run_dir, init)
        steps, budget = config.steps, config.time_budget_s
        within = f", at most {budget:g} s" if budget else ""
        _say(f"{stage + 1}/5 training stage {stage} ({steps} steps{within}, batch {cfg.batch_size}, "
             f"lr {cfg.lr:g})", t0)
        result = Trainer(config).train()
        if result.step < steps and result.stopped in ("finished", "time_limit"):
            _say(f"    {result.step} of the {steps} steps fit the stage's {budget:g} s on this machine", t0)
        if result.stopped not in ("finished", "time_limit"):
            signum = next(sig for sig, name in STOP_SIGNALS.items() if name == result.stopped)
            raise Interrupted(signum, f"{signal.Signals(signum).name}: the demo stopped in stage {stage} at step "
                                      f"{result.step} (checkpoint {result.last_checkpoint}); `fantasyworld demo "
                                      f"--resume --out {out}` continues")
        init = result.last_checkpoint
        history = read_metrics(run_dir)  # the whole stage, also when it was resumed
        runs[f"stage{stage}"] = {"checkpoint": str(result.last_checkpoint), "steps": result.step,
                                 "first_losses": history[0] if history else {},
                                 "last_losses": history[-1] if history else {}}
        timings[f"stage{stage}"] = time.perf_counter() - start
    assert init is not None
    release_device_cache()  # the training latents leave memory before generation and evaluation

    # 4. generation along an unseen camera path
    start = time.perf_counter()
    pipe = FantasyWorldPipeline.from_pretrained(init, backbone=str(ASSETS / "backbone"), vae=str(ASSETS / "vae"),
                                                text_encoder="tiny", device="cpu")
    prompt = next(r.prompt for r in load_metadata(worlds) if r.clip_id == held_ids[0])
    _say(f"4/5 generating along {cfg.camera!r} (no training clip has it): {prompt!r}", t0)
    gen = pipe(prompt, camera=cfg.camera, num_frames=cfg.num_frames, height=cfg.size, width=cfg.size,
               num_steps=cfg.gen_steps, guidance_scale=1.0, seed=cfg.seed, negative_prompt="", progress=cfg.progress)
    with staged_output_dir(out / "generation") as tmp:
        gen_files = {k: out / "generation" / v.relative_to(tmp) for k, v in gen.save(tmp).items()}
    timings["generation"] = time.perf_counter() - start

    # 5. evaluation on the held-out worlds
    start = time.perf_counter()
    _say("5/5 evaluating on the held-out worlds", t0)
    settings = EvalSettings(split="held-out", held_out_fraction=cfg.held_out_fraction, max_clips=cfg.max_eval_clips,
                            sigma=cfg.eval_sigma, num_steps=cfg.gen_steps, seed=cfg.seed)
    metrics = evaluate(init, worlds, out / "evaluation", settings, pipe=pipe,
                       log=lambda m: _say(m, t0))
    timings["evaluation"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0

    summary = {
        "config": asdict(cfg), "assets": str(ASSETS), "train_clips": train_ids, "held_out_clips": held_ids,
        "runs": runs, "generation": {"prompt": prompt, "camera": cfg.camera,
                                     "files": sorted(str(p.relative_to(out)) for p in gen_files.values())},
        "acceptance": metrics.get("acceptance"), "summary": metrics["summary"], "timings": timings,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    write_demo_page(out, summary)
    verdict = (metrics.get("acceptance") or {}).get("verdict", "")
    _say(f"done in {timings['total']:.0f} s. {verdict}", t0)
    _say(f"open {out / 'report.html'}", t0)
    return summary


def write_demo_page(out: Path, summary: dict[str, Any]) -> Path:
    """``OUT/report.html``: what the demo did, the verdict, the generated clip and the
    evaluation's figures, with links to every file."""
    from fantasyworld.eval.report import _html_table, _table_rows

    acc = summary.get("acceptance") or {}
    ok = acc.get("passed")
    color = "#060" if ok else "#b00"
    t = summary["timings"]
    c = summary["config"]
    runs = summary["runs"]

    def loss_row(stage: str) -> str:
        first, last = runs[stage]["first_losses"], runs[stage]["last_losses"]
        keys = [k for k in ("objective", "loss_depth", "loss_camera", "loss_diff") if k in last]
        return "".join(f"<tr><td>{stage}</td><td>{k}</td><td>{first.get(k, float('nan')):.3f}</td>"
                       f"<td>{last[k]:.3f}</td></tr>" for k in keys)

    files = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in summary["generation"]["files"])
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FantasyWorld demo</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{font-size:13px;padding:2px 8px;text-align:left;border-bottom:1px solid #eee}}
video,img{{image-rendering:pixelated}} video{{width:256px}} .row{{display:flex;gap:16px;flex-wrap:wrap}}</style>
</head><body>
<h1>FantasyWorld demo (tiny preset, CPU)</h1>
<p>{len(summary["train_clips"]) + len(summary["held_out_clips"])} synthetic worlds ({c["num_frames"]} frames,
{c["size"]}x{c["size"]}) were rendered; {len(summary["train_clips"])} trained stage 1
({runs["stage1"]["steps"]} steps) and stage 2 ({runs["stage2"]["steps"]} steps) on the pretrained tiny backbone;
{len(summary["held_out_clips"])} were held out and never seen in training. Total {t["total"]:.0f} s.</p>
<p style="color:{color};font-weight:bold">{html.escape(acc.get("verdict", "no acceptance check"))}</p>
<h2>Held-out worlds: model vs trivial baselines</h2>
{_html_table(_table_rows(summary["summary"]))}
<p>Full report: <a href="evaluation/report.html">evaluation/report.html</a>,
numbers: <a href="evaluation/metrics.json">evaluation/metrics.json</a>.</p>
<img src="evaluation/depth_samples.png"> <img src="evaluation/trajectories.png">
<h2>A generated clip along an unseen camera path</h2>
<p>Prompt: {html.escape(summary["generation"]["prompt"])}<br>
Camera: <code>{html.escape(summary["generation"]["camera"])}</code>
(pipeline report: <a href="generation/report.html">generation/report.html</a>)</p>
<div class="row"><figure><video src="generation/video.mp4" controls autoplay loop muted></video>
<figcaption>video.mp4</figcaption></figure><figure><video src="generation/depth.mp4" controls autoplay loop muted>
</video><figcaption>depth.mp4 (inverse depth, near red)</figcaption></figure></div>
<p>Generation files (point cloud <code>points.ply</code>, cameras <code>cameras.json</code>, depth
<code>depth.npz</code>, COLMAP model):</p><ul>{files}</ul>
<h2>Training</h2>
<table><tr><th>stage</th><th>loss</th><th>first step</th><th>last step</th></tr>{loss_row("stage1")}{loss_row("stage2")}
</table>
<p>Checkpoints: <code>runs/stage1</code>, <code>runs/stage2</code> (metrics.jsonl per step).</p>
<h2>Timings</h2><table>{"".join(f"<tr><td>{k}</td><td>{v:.1f} s</td></tr>" for k, v in t.items())}</table>
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc)
    return path


__all__ = ["ASSETS", "CONFIG_NAME", "DEMO_CAMERA", "DemoConfig", "make_train_root", "replace", "run_demo",
           "write_demo_page"]
