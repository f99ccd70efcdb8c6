"""One preconditioning layer of the forward (SPEC 3.2 step 2), as a module.

Layer ``i < PCB`` is the whole frozen Wan block ``i``; with camera conditioning (stage 2 and a
camera adapter on that block) the adapter adds its shift inside the block's cross-attention,
so the block runs as its two halves (:func:`~fantasyworld.models.wan_backbone.attention_half`,
:func:`~fantasyworld.models.wan_backbone.ffn_half`); without one it is ``block.forward``.

Like :class:`~fantasyworld.models.irg_layer.IRGLayer` it *references* its parts (the Wan block
stays ``transformer.blocks.{i}``, the adapter ``camera_adapters.{i}``) and owns no parameters:
it exists so that one layer, adapter included, is one region to compile or checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from fantasyworld.models import wan_backbone as wanb
from fantasyworld.models.camera_conditioning import CameraAdapter

__all__ = ["PCBLayer"]


class PCBLayer(nn.Module):
    """Wan block ``i`` with its optional camera adapter.

    Args:
        wan_block: the frozen Wan block ``i`` (diffusers ``WanTransformerBlock``).
        camera_adapter: the :class:`CameraAdapter` of block ``i``, or None.
    """

    def __init__(self, wan_block: nn.Module, camera_adapter: CameraAdapter | None = None) -> None:
        super().__init__()
        # Plain attributes, not sub-modules: every part stays registered once, under its owner.
        self.__dict__["_parts"] = (wan_block, camera_adapter)

    @property
    def wan_block(self) -> nn.Module:
        return self._parts[0]

    @property
    def camera_adapter(self) -> CameraAdapter | None:
        return self._parts[1]

    def forward(self, hidden_states: torch.Tensor, inputs: wanb.WanInputs,
                pose_feature: torch.Tensor | None = None) -> torch.Tensor:
        """Video tokens ``(B, L, D_wan)`` -> ``(B, L, D_wan)``; ``pose_feature`` ``(B, L, P_pose)``
        feeds the camera adapter (None: no camera conditioning)."""
        wan_block, adapter = self._parts
        if adapter is None or pose_feature is None:
            return wanb.run_block(wan_block, hidden_states, inputs)

        def hook(attn_out: torch.Tensor) -> torch.Tensor:
            return adapter(attn_out, pose_feature.to(attn_out.dtype))

        return wanb.run_block(wan_block, hidden_states, inputs, hook)
