"""One IRG layer of the stage-2 forward (SPEC 3.2 step 5), as a module.

Layer ``i`` interleaves the two streams, after the geometry frame block of that layer:

1. Wan block ``PCB + i``: self-attention and cross-attention half (the camera adapter of
   that block, if any, adds its shift inside the cross-attention);
2. geometry global block ``i``: attention half (all frames, layout ``(B, F*P, D)``);
3. bidirectional cross-attention ``i`` between the video tokens ``(B, L, D_wan)`` and the
   geometry tokens ``(B, F*P, D)``;
4. both FFN halves.

The parts are *referenced*, not owned: each keeps its one registered name under the model
(``transformer.blocks.{PCB+i}``, ``geometry.global_blocks.{i}``, ``interactions.{i}``,
``camera_adapters.{PCB+i}``), so state-dict keys, checkpoints and the official key mapping
are unchanged and an :class:`IRGLayer` holds no parameters. It lives in ``models/`` (not
``layers/``) because it drives a frozen Wan block through :mod:`~fantasyworld.models.wan_backbone`.
"""

from __future__ import annotations

import torch
from torch import nn

from fantasyworld.layers.bicross_attention import BiCrossAttention
from fantasyworld.layers.geo_block import GeoBlock, RotaryFn
from fantasyworld.models import wan_backbone as wanb
from fantasyworld.models.camera_conditioning import CameraAdapter

__all__ = ["IRGLayer"]

RotaryPair = tuple[torch.Tensor, torch.Tensor]


class IRGLayer(nn.Module):
    """Wan attention half -> geometry global attention half -> bidirectional cross-attention -> FFN halves.

    Args:
        wan_block: the frozen Wan block ``PCB + i`` (diffusers ``WanTransformerBlock``).
        global_block: geometry global block ``i`` (:class:`GeoBlock`).
        interaction: :class:`BiCrossAttention` ``i``.
        camera_adapter: the :class:`CameraAdapter` of Wan block ``PCB + i``, or None.
    """

    def __init__(self, wan_block: nn.Module, global_block: GeoBlock, interaction: BiCrossAttention,
                 camera_adapter: CameraAdapter | None = None) -> None:
        super().__init__()
        # Plain attributes, not sub-modules: every part stays registered once, under its owner.
        self.__dict__["_parts"] = (wan_block, global_block, interaction, camera_adapter)

    @property
    def wan_block(self) -> nn.Module:
        return self._parts[0]

    @property
    def global_block(self) -> GeoBlock:
        return self._parts[1]

    @property
    def interaction(self) -> BiCrossAttention:
        return self._parts[2]

    @property
    def camera_adapter(self) -> CameraAdapter | None:
        return self._parts[3]

    def forward(
        self,
        hidden_states: torch.Tensor,
        geometry_states: torch.Tensor,
        inputs: wanb.WanInputs,
        geometry_temb: torch.Tensor,
        rope_global: RotaryFn,
        rope_video: RotaryPair,
        rope_geometry: RotaryPair,
        pose_feature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One interleaved layer of both streams.

        Args:
            hidden_states: video tokens ``(B, L, D_wan)``, ``L = F*h*w``.
            geometry_states: geometry tokens in the global layout ``(B, F*P, D)``,
                ``P = 5 + h*w`` (camera + 4 register tokens per frame).
            inputs: the Wan per-forward quantities (modulation, context, 3D RoPE).
            geometry_temb: geometry timestep modulation ``(B, 6, D)`` float32.
            rope_global: the global block's 2D RoPE.
            rope_video, rope_geometry: the cross-attention's 3D RoPE for each stream
                (identity rotation on the special tokens).
            pose_feature: ``(B, L, P_pose)`` pose features for the camera adapter, or None.
        Returns:
            ``(hidden_states (B, L, D_wan), geometry_states (B, F*P, D))``.
        """
        wan_block, global_block, interaction, adapter = self._parts
        hook = None
        if adapter is not None and pose_feature is not None:
            def hook(attn_out: torch.Tensor) -> torch.Tensor:
                return adapter(attn_out, pose_feature.to(attn_out.dtype))
        mod = global_block.modulation_terms(geometry_temb, geometry_states.shape[0])
        # 1. Wan attention half; 2. geometry global attention half
        hidden_states = wanb.attention_half(wan_block, hidden_states, inputs, hook)
        geometry_states = global_block.attention_half(geometry_states, mod, rope_global)
        # 3. bidirectional cross-attention
        hidden_states, geometry_states = interaction(hidden_states, geometry_states, rope_video, rope_geometry)
        # 4. FFN halves
        hidden_states = wanb.ffn_half(wan_block, hidden_states, inputs)
        geometry_states = global_block.ffn_half(geometry_states, mod)
        return hidden_states, geometry_states
