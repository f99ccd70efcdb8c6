"""FantasyWorld: a frozen Wan2.1 transformer plus a trainable geometry branch.

Forward pass (SPEC 3.2), letter legend B batch, F latent frames, T = 4(F-1)+1 pixel
frames, (h, w) token grid, (H, W) = 16 (h, w) pixels, L = F*h*w video tokens:

1. Wan embedding: patch embed, time embedding -> 6-way modulation, text context (CLIP
   image tokens prepended for I2V), 3D RoPE.
2. Preconditioning blocks (the first ``num_pcb`` Wan blocks), each with its camera
   adapter inside the cross-attention if configured (stage 2).
3. Latent bridge: PCB tokens -> geometry tokens, plus camera and register tokens.
4. Geometry timestep modulation from the same timestep.
5. IRG layers i = 0 .. num_irg-1: geometry frame block; Wan block PCB+i attention half;
   geometry global block attention half; bidirectional cross-attention; both FFN halves.
6. Wan output head -> predicted flow (velocity) for the video latent.
7. Heads: each registered head asked for (depth, point map, camera; :mod:`fantasyworld.heads.registry`).

Stages: stage 1 trains the geometry branch only and skips everything that cannot change
a stage-1 loss: camera conditioning, the IRG Wan blocks, the cross-attention and the Wan
output head (with zero gammas the geometry stream does not read the video stream after
the PCBs, so this is exact). Stage 2 runs everything. Every Wan parameter is frozen in
both stages.

Wan2.2-Fun presets (``control_adapter_channels > 0``): the camera enters once, through the
frozen control adapter whose tokens are added to the patch embedding (step 1), in both
stages (it is part of the base model the geometry branch reads); there is no pose encoder
and no cross-attention camera adapter, and no CLIP image tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from torch import nn

from fantasyworld.errors import CheckpointError
from fantasyworld.heads.registry import ALL_HEADS, resolve_heads
from fantasyworld.layers.bicross_attention import BiCrossAttention, bicross_rotary
from fantasyworld.layers.control_adapter import ControlAdapter, pack_plucker_frames
from fantasyworld.models import wan_backbone as wanb
from fantasyworld.models.camera_conditioning import CameraAdapter, PoseEncoder
from fantasyworld.models.checkpointing import checkpoint_mode, checkpoint_region
from fantasyworld.models.config import FantasyWorldConfig
from fantasyworld.models.geometry_branch import GeometryBranch
from fantasyworld.models.irg_layer import IRGLayer
from fantasyworld.models.pcb_layer import PCBLayer
from fantasyworld.models.wan_loading import check_state_dict

#: ``activation_offload`` value -> the parts of the forward whose saved activations go to pinned
#: host memory: ``heads`` (the pixel-rate heads' latent-rate stage and temporal upsamplers, the
#: largest activations of a step) and ``layers`` (the PCB/IRG/geometry layers; with layer or
#: selective checkpointing they keep only their inputs or cached matmul outputs, which the
#: checkpoint holds itself, so this matters without checkpointing).
ACTIVATION_OFFLOAD: dict[str, tuple[str, ...]] = {"none": (), "heads": ("heads",), "all": ("layers", "heads")}

#: Top-level modules trained in each stage (everything else is frozen).
STAGE_TRAINABLE: dict[int, tuple[str, ...]] = {
    1: ("geometry",),
    2: ("geometry", "interactions", "pose_encoder", "camera_adapters"),
}


class VideoStreamCache(Protocol):
    """What a stage-2 forward consults to reuse the video stream of an earlier step (inference
    step caching, :mod:`fantasyworld.inference.step_cache`; the policy lives there, not here).

    After the first ``probe_blocks`` preconditioning layers the forward calls ``reuse(x)``
    with their output ``x`` ``(B, L, D_wan)``: a tensor ``r`` of that shape means "skip the
    rest", and the flow is the Wan output head on ``x + r`` (no geometry stream, no heads);
    ``None`` means "run everything", and after the last IRG layer the forward calls
    ``store(x_last - x)`` with the residual of the remaining video blocks.
    """

    probe_blocks: int

    def reuse(self, probe: torch.Tensor) -> torch.Tensor | None: ...

    def store(self, residual: torch.Tensor) -> None: ...


class FantasyWorldModel(nn.Module):
    """Frozen Wan2.1 transformer + FantasyWorld modules.

    Sub-modules: ``transformer`` (diffusers ``WanTransformer3DModel``, frozen),
    ``geometry`` (:class:`GeometryBranch`), ``interactions`` (one
    :class:`BiCrossAttention` per IRG layer), ``pose_encoder`` and ``camera_adapters``
    (keyed by Wan block index). ``irg_layers`` (one :class:`IRGLayer` per IRG layer)
    reference those parts in the stage-2 order; they own no parameters.

    How the model is compiled and sharded is declared here and applied from outside by
    :mod:`fantasyworld.models.parallelize` (paths of sub-modules, ``.*`` = every element).
    """

    #: regions compiled one by one, per granularity: block path -> sub-modules compiled with it
    #: ("" = the block). ``layers``: each forward layer whole (a PCB layer with its adapter, an
    #: IRG layer with both streams and the cross-attention, a geometry frame block; the stage-1
    #: global blocks), so the modulation/norm/RoPE elementwise work fuses across the parts.
    #: ``blocks``: every repeated block and the sub-modules the layers drive piecewise.
    _compile_regions: dict[str, dict[str, tuple[str, ...]]] = {
        "layers": {
            "pcb_layers.*": ("",),
            "irg_layers.*": ("",),
            "geometry.frame_blocks.*": ("",),
            "geometry.global_blocks.*": ("",),
        },
        "blocks": {
            "transformer.blocks.*": ("", "ffn"),
            "geometry.frame_blocks.*": ("", "attn", "mlp"),
            "geometry.global_blocks.*": ("", "attn", "mlp"),
            "interactions.*": ("",),
            "camera_adapters.*": ("",),
        },
    }
    #: FSDP units other than the heads, innermost first; the model itself is the root (Wan's
    #: own forward never runs). :attr:`_fsdp_units` adds one unit per built head.
    _fsdp_block_units: tuple[str, ...] = ("geometry.frame_blocks.*", "geometry.global_blocks.*", "interactions.*")
    #: methods the forward calls on a unit instead of ``forward`` (the IRG layers run the
    #: global blocks in halves); FSDP must all-gather on them as on ``forward``
    _fsdp_forward_methods: dict[str, tuple[str, ...]] = {
        "geometry.global_blocks.*": ("modulation_terms", "attention_half", "ffn_half"),
    }
    #: frozen modules replicated on every rank, never sharded (the Wan blocks run in halves,
    #: so a Wan block cannot be an FSDP unit whose hooks fire)
    _fsdp_ignored: tuple[str, ...] = ("transformer",)

    def __init__(
        self,
        config: FantasyWorldConfig,
        transformer: WanTransformer3DModel | None = None,
        device: torch.device | str | None = None,
        control_adapter: ControlAdapter | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = transformer if transformer is not None else wanb.build_wan_transformer(config.wan, device)
        self.transformer.requires_grad_(False)
        with torch.device(device or "cpu"):
            self.geometry = GeometryBranch(config)
            self.interactions = nn.ModuleList(
                BiCrossAttention(config.wan_dim, config.geo_dim, config.bicross_dim, config.bicross_heads)
                for _ in range(config.num_irg)
            )
            # Wan2.2-Fun: the camera enters through the backbone's control adapter (frozen, part
            # of the Wan base) instead of a pose encoder + cross-attention adapters.
            self.pose_encoder = None if config.has_control_adapter else PoseEncoder(
                config.plucker_channels, config.wan_dim, config.pose_feature_dim, config.pose_downscale
            )
            self.camera_adapters = nn.ModuleDict(
                {str(i): CameraAdapter(config.wan_dim, config.pose_feature_dim) for i in config.camera_adapter_blocks}
            )
            if control_adapter is None and config.has_control_adapter:
                control_adapter = ControlAdapter(
                    config.control_adapter_channels, config.wan_dim, config.control_adapter_downscale)
            self.control_adapter = control_adapter if config.has_control_adapter else None
        if self.control_adapter is not None:
            self.control_adapter.requires_grad_(False)
            self._fsdp_ignored = ("transformer", "control_adapter")
        #: the preconditioning layers and the stage-2 IRG layers; they reference the parts
        #: above (no parameters of their own)
        self.pcb_layers = nn.ModuleList(
            PCBLayer(self.transformer.blocks[i], self.camera_adapters[str(i)] if str(i) in self.camera_adapters
                     else None)
            for i in range(config.num_pcb)
        )
        self.irg_layers = nn.ModuleList(
            IRGLayer(self.transformer.blocks[config.num_pcb + i], self.geometry.global_blocks[i],
                     self.interactions[i], self.camera_adapters[str(config.num_pcb + i)]
                     if str(config.num_pcb + i) in self.camera_adapters else None)
            for i in range(config.num_irg)
        )
        #: activation checkpointing of every layer (:mod:`fantasyworld.models.checkpointing`)
        self.checkpointing = "none"
        #: which saved activations go to pinned host memory in training (:data:`ACTIVATION_OFFLOAD`)
        self.activation_offload = "none"
        self.checkpoint_heads = False
        self.stage = 2
        self.set_stage(2)

    @property
    def _fsdp_units(self) -> tuple[str, ...]:
        """FSDP units, innermost first: the blocks, then every head the geometry branch built
        from the heads registry (``geometry.<module>``), so a registered head is sharded too."""
        return self._fsdp_block_units + tuple(f"geometry.{spec.module}" for spec in self.geometry.head_specs)

    @property
    def checkpointing(self) -> str:
        """Activation checkpointing mode of the layers: ``none``, ``layer`` (whole layers
        recomputed) or ``selective`` (matmul/attention outputs kept, the rest recomputed);
        :data:`~fantasyworld.models.checkpointing.CHECKPOINT_MODES`."""
        return self._checkpointing

    @checkpointing.setter
    def checkpointing(self, value: str) -> None:
        self._checkpointing = checkpoint_mode(value).name

    @property
    def gradient_checkpointing(self) -> bool:
        """Any activation checkpointing on (setting True selects ``layer`` unless a mode is set)."""
        return self._checkpointing != "none"

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        if not value:
            self._checkpointing = "none"
        elif self._checkpointing == "none":
            self._checkpointing = "layer"

    @property
    def activation_offload(self) -> str:
        """Parts whose saved activations live in pinned host memory between forward and
        backward (``torch.autograd.graph.save_on_cpu``): a key of :data:`ACTIVATION_OFFLOAD`."""
        return self._activation_offload

    @activation_offload.setter
    def activation_offload(self, value: str) -> None:
        if value not in ACTIVATION_OFFLOAD:
            raise ValueError(f"activation_offload must be one of {', '.join(ACTIVATION_OFFLOAD)}, got {value!r}")
        self._activation_offload = value

    def _offload(self, part: str, device: torch.device) -> contextlib.AbstractContextManager:
        """``save_on_cpu`` around ``part`` (``layers`` or ``heads``) when it is offloaded and
        gradients are on; a null context otherwise."""
        if part not in ACTIVATION_OFFLOAD[self._activation_offload] or not torch.is_grad_enabled():
            return contextlib.nullcontext()
        return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda", device_type=device.type)

    def set_dpt_layout(self, channels_last: bool | None = None, resize: str | None = None) -> None:
        """Speed options of the DPT heads' fusion stage (:meth:`DPTHead.set_layout`), for every
        head that has them; the outputs are unchanged to rounding."""
        for spec in self.geometry.head_specs:
            head = getattr(self.geometry, spec.module)
            if hasattr(head, "set_layout"):
                head.set_layout(channels_last=channels_last, resize=resize)

    @property
    def checkpoint_heads(self) -> bool:
        """Also recompute the pixel-rate heads' full-resolution stage (the DPT fusion), one
        frame chunk at a time; at 81 frames of pixel resolution their activations dominate memory."""
        return self._checkpoint_heads

    @checkpoint_heads.setter
    def checkpoint_heads(self, value: bool) -> None:
        self._checkpoint_heads = bool(value)
        for spec in self.geometry.head_specs:
            if spec.pixel_rate:
                getattr(self.geometry, spec.module).checkpoint_fusion = bool(value)

    # ------------------------------------------------------------------ stages
    def fantasyworld_modules(self) -> dict[str, nn.Module]:
        """The non-Wan top-level modules by name (a control-adapter model has no pose encoder)."""
        modules = {
            "geometry": self.geometry, "interactions": self.interactions,
            "pose_encoder": self.pose_encoder, "camera_adapters": self.camera_adapters,
        }
        return {k: v for k, v in modules.items() if v is not None}

    def wan_modules(self) -> dict[str, nn.Module]:
        """The frozen Wan base by name: the transformer, and the Wan2.2-Fun control adapter."""
        modules = {"transformer": self.transformer}
        if self.control_adapter is not None:
            modules["control_adapter"] = self.control_adapter
        return modules

    def set_stage(self, stage: int) -> FantasyWorldModel:
        """Set ``requires_grad`` for ``stage`` (1 or 2); all Wan parameters stay frozen."""
        if stage not in STAGE_TRAINABLE:
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage = stage
        for module in self.wan_modules().values():
            module.requires_grad_(False)
        for name, module in self.fantasyworld_modules().items():
            module.requires_grad_(name in STAGE_TRAINABLE[stage])
        params = dict(self.geometry.named_parameters())
        for name in self.geometry.compatibility_only_parameters():
            params[name].requires_grad_(False)  # kept for official weights; no path to outputs
        return self

    def train(self, mode: bool = True) -> FantasyWorldModel:
        super().train(mode)
        for module in self.wan_modules().values():
            module.eval()  # frozen: never in training mode
        return self

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ weights
    def stage_state_keys(self, stage: int) -> list[str]:
        """Keys of the weights a stage-``stage`` checkpoint holds (its trainable set)."""
        keep = STAGE_TRAINABLE[stage]
        keys = []
        for name, module in self.fantasyworld_modules().items():
            if name in keep:
                keys += [f"{name}.{k}" for k in module.state_dict()]
        return keys

    def fantasyworld_state_dict(self, stage: int | None = None) -> dict[str, torch.Tensor]:
        """Weights of the FantasyWorld modules (those of ``stage``, default: current)."""
        keys = set(self.stage_state_keys(stage or self.stage))
        return {k: v for k, v in self.state_dict().items() if k in keys}

    def load_fantasyworld_state_dict(self, state: dict[str, torch.Tensor], stage: int, source: str = "state") -> None:
        """Load a stage-``stage`` weight set strictly (names missing/unexpected keys)."""
        own = self.state_dict()
        expected = {k: own[k].shape for k in self.stage_state_keys(stage)}
        check_state_dict(expected, state, source)
        self.load_state_dict(state, strict=False)

    def save_fantasyworld(self, path: str | Path, stage: int | None = None, metadata: dict | None = None) -> None:
        """Write the FantasyWorld weights of ``stage`` as safetensors (fp32 kept as is)."""
        stage = stage or self.stage
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.fantasyworld_state_dict(stage).items()}
        meta = {"format": "fantasyworld", "stage": str(stage), "preset": self.config.name}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        save_file(tensors, str(path), metadata=meta)

    def load_fantasyworld(self, path: str | Path, stage: int) -> None:
        """Load a safetensors file written by :meth:`save_fantasyworld` for ``stage``."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file does not exist")
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: unreadable safetensors checkpoint ({exc})") from exc
        self.load_fantasyworld_state_dict(state, stage, str(path))

    # ------------------------------------------------------------------ forward
    def _ckpt(self, fn: Callable, *args):
        return checkpoint_region(self._checkpointing, fn, *args)

    def encode_camera(self, plucker: torch.Tensor) -> torch.Tensor:
        """Plucker rays (B, T, 6, H, W) -> pose features (B, L, P) for the adapters.

        With a control adapter (Wan2.2-Fun) the features are the adapter's tokens (B, L, D),
        added to the patch embedding; they do not depend on the timestep either.
        """
        if self.control_adapter is not None:
            dtype = self.control_adapter.conv.weight.dtype
            packed = pack_plucker_frames(plucker.to(dtype), self.config.control_adapter_channels
                                         // self.config.plucker_channels)
            return self.control_adapter(packed).flatten(2).transpose(1, 2)
        return self.pose_encoder(plucker.to(next(self.pose_encoder.parameters()).dtype))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_emb: torch.Tensor,
        *,
        plucker: torch.Tensor | None = None,
        pose_feature: torch.Tensor | None = None,
        cond_latent: torch.Tensor | None = None,
        image_emb: torch.Tensor | None = None,
        camera_pose_enc: torch.Tensor | None = None,
        stage: int | None = None,
        heads: str | tuple[str, ...] | None = ALL_HEADS,
        pixel_frames: torch.Tensor | None = None,
        step_cache: VideoStreamCache | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """Joint video + geometry prediction.

        Args:
            latents: noisy video latents (B, 16, F, H/8, W/8), normalised Wan latent space.
            timestep: (B,) diffusion timesteps in [0, 1000] (sigma * 1000).
            text_emb: (B, Lt, text_dim) text-encoder states (I2V: Lt = 512, zero-padded).
            plucker: (B, T, 6, H, W) Plucker rays of the requested cameras (relative to
                frame 0, pixel intrinsics), or ``pose_feature`` precomputed from them
                (:meth:`encode_camera`). Without either, no camera conditioning is applied.
                With a control adapter (Wan2.2-Fun) the camera is applied in both stages
                (the adapter is part of the frozen base), otherwise in stage 2 only.
            cond_latent: I2V conditioning (B, 20, F, H/8, W/8): 4 mask + 16 image channels.
            image_emb: I2V CLIP image tokens (B, 257, image_dim); only for presets with CLIP.
            camera_pose_enc: (B, T, 9) poses for the optional pose-conditioned camera token.
            stage: 1 or 2 (default: ``self.stage``). Stage 1 returns no ``flow``.
            heads: names of the heads to run (:mod:`fantasyworld.heads.registry`), ``ALL_HEADS``
                (every head), or ``None``/empty (none, e.g. all but the last sampling step).
            pixel_frames: optional (B, K) int64 pixel-frame indices in [0, T): the pixel-rate
                heads predict only these frames, and their outputs hold K frames instead of T
                (training's frame subset; the camera head still predicts every frame).
            step_cache: inference only, stage 2: a :class:`VideoStreamCache` that may replace
                everything after its probe layers by an earlier step's video residual
                (``None``, the default: the plain forward, unchanged).
        Returns:
            dict with ``flow`` (B, 16, F, H/8, W/8) or None in stage 1, and the outputs of each
            head that ran: ``depth``/``depth_conf`` (B, T, H, W), ``world_points`` (B, T, H, W, 3)
            / ``world_points_conf`` (B, T, H, W), ``pose_enc`` (B, T, 9), ``pose_enc_list``, ``w2c``,
            ``intrinsics`` (the heads registry lists each head's keys).
        """
        stage = stage or self.stage
        heads = resolve_heads(heads, self.geometry.head_names)
        cfg = self.config
        wan = self.transformer
        if cfg.is_i2v:
            if cond_latent is None or (cfg.uses_clip and image_emb is None):
                need = "cond_latent and image_emb" if cfg.uses_clip else "cond_latent"
                raise ValueError(f"preset {cfg.name} is image-to-video: pass {need}")
            if cfg.uses_clip and text_emb.shape[1] != wanb.WAN_TEXT_LEN:
                raise ValueError(f"I2V text embeddings must be padded to {wanb.WAN_TEXT_LEN} tokens, "
                                 f"got {text_emb.shape[1]}")
            model_in = torch.cat([latents, cond_latent.to(latents.dtype)], dim=1)
        else:
            model_in = latents
        inputs = wanb.embed_inputs(wan, model_in, timestep, text_emb, image_emb if cfg.uses_clip else None)
        b = latents.shape[0]
        f, h, w = inputs.grid
        image_hw = (h * 16, w * 16)
        x = inputs.tokens

        control = self.control_adapter is not None
        if (stage == 2 or control) and pose_feature is None and plucker is not None:
            if control:  # frozen base module: never trained
                with torch.no_grad():
                    pose_feature = self.encode_camera(plucker)
            else:
                pose_feature = self._ckpt(self.encode_camera, plucker)
        if stage == 1 and not control:
            pose_feature = None
        if control and pose_feature is not None:
            # 1b. Wan2.2-Fun: the control adapter's tokens are added to the patch embedding
            x = x + pose_feature.to(x.dtype)
            pose_feature = None  # no cross-attention adapters

        if step_cache is not None and (stage != 2 or not 1 <= step_cache.probe_blocks <= cfg.num_pcb):
            raise ValueError(f"step_cache needs stage 2 and 1 <= probe_blocks <= {cfg.num_pcb} "
                             f"(got stage {stage}, probe_blocks {step_cache.probe_blocks})")
        probe = None
        with self._offload("layers", x.device):  # saved activations of the layers to host memory, if asked
            # 2. preconditioning blocks
            for i in range(cfg.num_pcb):
                if stage == 1:
                    with torch.no_grad():
                        x = self.pcb_layers[i](x, inputs)
                else:
                    x = self._ckpt(self.pcb_layers[i], x, inputs, pose_feature)
                if step_cache is not None and i + 1 == step_cache.probe_blocks:
                    residual = step_cache.reuse(x)
                    if residual is not None:  # the rest of the video stream is an earlier step's residual
                        if heads:
                            raise ValueError("a step whose video stream is reused runs no heads")
                        return {"flow": wanb.output_head(wan, x + residual.to(x.dtype), inputs)}
                    probe = x

            # 3./4. latent bridge, special tokens, geometry modulation
            geo_branch = self.geometry
            tokens = self._ckpt(geo_branch.bridge, x, inputs.grid, camera_pose_enc)
            temb6 = geo_branch.time_modulation(timestep)
            rope_frame, rope_global = geo_branch.rotary(inputs.grid, x.device)
            p = tokens.shape[1]
            if stage == 2:
                head_dim = cfg.bicross_dim // cfg.bicross_heads
                rope_v, rope_g = bicross_rotary(inputs.grid, head_dim, geo_branch.patch_start_idx, x.device)

            want = {i for i in cfg.dpt_layers} | {cfg.num_irg - 1}
            kept: dict[int, torch.Tensor] = {}
            # 5. IRG layers
            for i in range(cfg.num_irg):
                tokens = self._ckpt(geo_branch.frame_blocks[i], tokens, temb6, rope_frame)  # (B*F, P, D)
                frame_out = tokens.view(b, f, p, -1)
                g = tokens.view(b, f * p, -1)
                if stage == 1:
                    g = self._ckpt(geo_branch.global_blocks[i], g, temb6, rope_global)
                else:
                    x, g = self._ckpt(self.irg_layers[i], x, g, inputs, temb6, rope_global, rope_v, rope_g,
                                      pose_feature)
                tokens = g.view(b * f, p, -1)
                if i in want:
                    kept[i] = torch.cat([frame_out, g.view(b, f, p, -1)], dim=-1)  # (B, F, P, 2D)

            out: dict[str, torch.Tensor | list[torch.Tensor] | None] = {"flow": None}
            # 6. Wan head
            if stage == 2:
                if probe is not None:
                    step_cache.store(x - probe)
                out["flow"] = wanb.output_head(wan, x, inputs)
        # 7. heads
        if heads:
            inter_list = [kept[i] for i in cfg.dpt_layers]
            with self._offload("heads", x.device):
                out.update(geo_branch.run_heads(inter_list, kept[cfg.num_irg - 1], image_hw, heads, pixel_frames))
        return out
