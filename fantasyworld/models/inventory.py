"""Parameter inventory per module group and stage (``fantasyworld verify-config``).

Groups are declared by parameter-name prefix, so a new module that matches no group is
reported instead of silently counted somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fantasyworld.models.fantasyworld import STAGE_TRAINABLE, FantasyWorldModel


@dataclass
class GroupCount:
    name: str
    params: int
    trains_stage1: bool
    trains_stage2: bool
    is_wan: bool


def _groups(model: FantasyWorldModel) -> list[tuple[str, bool, tuple[str, ...]]]:
    """(group name, is Wan, name prefixes)."""
    c = model.config
    pcb = tuple(f"transformer.blocks.{i}." for i in range(c.num_pcb))
    irg = tuple(f"transformer.blocks.{i}." for i in range(c.num_pcb, c.num_wan_blocks))
    return [
        ("Wan patch embedding", True, ("transformer.patch_embedding.",)),
        ("Wan condition embedder (time/text/image)", True, ("transformer.condition_embedder.",)),
        (f"Wan blocks 0-{c.num_pcb - 1} (PCB)", True, pcb),
        (f"Wan blocks {c.num_pcb}-{c.num_wan_blocks - 1} (IRG)", True, irg),
        ("Wan output head", True, ("transformer.norm_out.", "transformer.proj_out.", "transformer.scale_shift_table")),
        ("Wan2.2-Fun camera control adapter", True, ("control_adapter.",)),
        ("latent bridge", False, ("geometry.projection_head.",)),
        ("camera + register tokens", False, ("geometry.camera_token", "geometry.register_token")),
        ("camera token projector (official, unused)", False, ("geometry.cam_token_projector.",)),
        ("geometry time embedding", False, ("geometry.time_embedding.", "geometry.time_projection.")),
        ("geometry frame blocks", False, ("geometry.frame_blocks.",)),
        ("geometry global blocks", False, ("geometry.global_blocks.",)),
        ("depth head (DPT)", False, ("geometry.depth_head.",)),
        ("point head (DPT)", False, ("geometry.point_head.",)),
        ("camera head trunk modulation (official, unused)", False, (
            tuple(f"geometry.camera_head.trunk.{i}.modulation" for i in range(c.camera_head_depth)))),
        ("camera head", False, ("geometry.camera_head.",)),
        # any other registered head (heads registry): one group each; the built-in heads matched above
        *((f"{spec.name} head", False, (f"geometry.{spec.module}.",)) for spec in model.geometry.head_specs),
        ("IRG bidirectional cross-attention", False, ("interactions.",)),
        ("pose encoder (Plucker)", False, ("pose_encoder.",)),
        (f"camera adapters (blocks {_ranges(c.camera_adapter_blocks)})", False, ("camera_adapters.",)),
    ]


def _ranges(idx: tuple[int, ...]) -> str:
    if not idx:
        return "none"
    idx = tuple(sorted(idx))
    if idx == tuple(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}-{idx[-1]}"
    return ",".join(map(str, idx))


def _trainable_in(model: FantasyWorldModel, stage: int) -> dict[str, bool]:
    model.set_stage(stage)
    return {n: p.requires_grad for n, p in model.named_parameters()}


def inventory(model: FantasyWorldModel) -> list[GroupCount]:
    """Count parameters per group and whether each trains in stage 1 / 2.

    Raises ``RuntimeError`` if a parameter matches no group, or a group mixes trainable
    and frozen parameters within a stage.
    """
    current = model.stage
    t1, t2 = _trainable_in(model, 1), _trainable_in(model, 2)
    model.set_stage(current)
    params = dict(model.named_parameters())
    seen: set[str] = set()
    rows = []
    for name, is_wan, prefixes in _groups(model):
        names = [n for n in params if n.startswith(prefixes) and n not in seen]
        seen.update(names)
        if not names:
            continue
        flags = []
        for table in (t1, t2):
            vals = {table[n] for n in names}
            if len(vals) > 1:
                raise RuntimeError(f"group {name!r} mixes trainable and frozen parameters")
            flags.append(vals.pop())
        rows.append(GroupCount(name, sum(params[n].numel() for n in names), flags[0], flags[1], is_wan))
    orphans = sorted(set(params) - seen)
    if orphans:
        raise RuntimeError(f"parameters in no inventory group: {orphans[:8]}")
    return rows


def wan_trainable_violations(model: nn.Module) -> list[str]:
    """Names of Wan parameters that are trainable (must be empty in every stage)."""
    return [n for n, p in model.named_parameters()
            if n.startswith(("transformer.", "control_adapter.")) and p.requires_grad]


def format_table(rows: list[GroupCount], title: str) -> str:
    """Markdown table with counts in millions, then totals per stage."""
    def m(n: int) -> str:
        return f"{n / 1e6:,.2f}M" if n >= 1e4 else f"{n:,}"

    lines = [f"### {title}", "", "| module group | parameters | stage 1 | stage 2 |", "|---|---:|:---:|:---:|"]
    for r in rows:
        mark = ("frozen (Wan)", "frozen (Wan)") if r.is_wan else (
            "train" if r.trains_stage1 else "-", "train" if r.trains_stage2 else "-")
        lines.append(f"| {r.name} | {m(r.params)} | {mark[0]} | {mark[1]} |")
    wan = sum(r.params for r in rows if r.is_wan)
    fw = sum(r.params for r in rows if not r.is_wan)
    s1 = sum(r.params for r in rows if r.trains_stage1)
    s2 = sum(r.params for r in rows if r.trains_stage2)
    lines += [
        "",
        f"- Wan transformer{' + control adapter' if any(r.name.startswith('Wan2.2') for r in rows) else ''}"
        f" (frozen in both stages): {m(wan)}",
        f"- FantasyWorld modules: {m(fw)}",
        f"- trainable in stage 1: {m(s1)}",
        f"- trainable in stage 2: {m(s2)}",
        f"- total: {m(wan + fw)}",
    ]
    return "\n".join(lines)


__all__ = ["GroupCount", "inventory", "format_table", "wan_trainable_violations", "STAGE_TRAINABLE"]
