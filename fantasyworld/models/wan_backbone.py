"""Driving diffusers' ``WanTransformer3DModel`` block by block.

The frozen Wan2.1 transformer is never called through its own ``forward``: FantasyWorld
needs the hidden states after the preconditioning blocks, each IRG block split into an
attention half (self-attention + cross-attention) and an FFN half, and a hook inside the
cross-attention (the camera adapter) before its output projection. The functions here
reproduce ``WanTransformerBlock.forward`` and ``WanAttnProcessor`` (diffusers 0.42.1)
operation by operation, so that with inactive adapters the result is bit-identical to
the plain model (tested).

Shapes: latents (B, C, F, H8, W8) -> tokens (B, L, D) with L = F*h*w, h = H8/2, w = W8/2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention, WanTransformerBlock

from fantasyworld.layers.attention import attention, get_attention_backend

#: Text context length the Wan attention processor assumes for I2V (image tokens first).
WAN_TEXT_LEN = 512


@dataclass
class WanInputs:
    """Per-forward quantities shared by all Wan blocks.

    Attributes:
        tokens: (B, L, D) patch-embedded latents.
        temb: (B, D) time embedding (used by the output head).
        temb6: (B, 6, D) per-block modulation input (``timestep_proj``).
        context: (B, Lc, D) projected text context, with the 257 CLIP image tokens
            prepended for I2V.
        rotary_emb: (cos, sin), each (1, L, 1, head_dim) fp32/fp64, Wan's 3D RoPE.
        grid: (F, h, w) token grid.
    """

    tokens: torch.Tensor
    temb: torch.Tensor
    temb6: torch.Tensor
    context: torch.Tensor
    rotary_emb: tuple[torch.Tensor, torch.Tensor]
    grid: tuple[int, int, int]


def embed_inputs(
    wan: WanTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text_emb: torch.Tensor,
    image_emb: torch.Tensor | None = None,
) -> WanInputs:
    """Embed latents, timestep, text (and CLIP image tokens) exactly as Wan does.

    Args:
        latents: (B, C_in, F, H8, W8); for I2V C_in = 36 (16 noisy + 20 condition channels
            already concatenated by the caller).
        timestep: (B,) diffusion timestep in [0, 1000].
        text_emb: (B, Lt, text_dim) text encoder output (Lt = 512 for I2V).
        image_emb: (B, 257, image_dim) CLIP image tokens, I2V only.
    """
    p_t, p_h, p_w = wan.config.patch_size
    _, _, f, hh, ww = latents.shape
    grid = (f // p_t, hh // p_h, ww // p_w)
    rotary_emb = wan.rope(latents)
    tokens = wan.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()
    temb, timestep_proj, context, context_img = wan.condition_embedder(timestep, text_emb, image_emb)
    temb6 = timestep_proj.unflatten(1, (6, -1))
    if context_img is not None:
        context = torch.concat([context_img, context], dim=1)
    return WanInputs(tokens, temb, temb6, context, rotary_emb, grid)


def _modulation(block: WanTransformerBlock, temb6: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate, each (B, 1, D) fp32."""
    return (block.scale_shift_table + temb6.float()).chunk(6, dim=1)


def _attend(attn: WanAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            parallel_config=None) -> torch.Tensor:
    """``(B, Lq, H, d), (B, Lk, H, d) x2 -> (B, Lq, H, d)``: with the default ``sdpa`` backend
    diffusers' dispatch (its own backend setting honoured), as ``WanAttnProcessor`` calls it;
    otherwise the active :mod:`fantasyworld.layers.attention` backend."""
    if get_attention_backend() == "sdpa":
        return dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
            backend=attn.processor._attention_backend, parallel_config=parallel_config,
        )
    return attention(query, key, value, layout="bshd")


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE on ``(B, L, H, d)`` (``WanAttnProcessor``'s, operation by operation)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def self_attention(
    attn: WanAttention, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Wan self-attention with 3D RoPE: ``(B, L, D) -> (B, L, D)``.

    Reproduces ``WanAttnProcessor`` for self-attention (``attn1``), with the attention itself
    through :func:`_attend` so that the active attention backend runs it.
    """
    if attn.fused_projections:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    query = _apply_rotary(query, *rotary_emb)
    key = _apply_rotary(key, *rotary_emb)
    out = _attend(attn, query, key, value, parallel_config=attn.processor._parallel_config)
    out = out.flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))


def cross_attention(
    attn: WanAttention,
    hidden_states: torch.Tensor,
    context: torch.Tensor,
    adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Wan cross-attention (text, plus CLIP image tokens for I2V) with an optional hook.

    Reproduces ``WanAttnProcessor`` for cross-attention. ``adapter`` receives the
    attention output before the output projection, (B, L, D), and returns the tensor to
    project (the camera adapter adds its shift there).
    """
    context_img = None
    if attn.add_k_proj is not None:
        n_img = context.shape[1] - WAN_TEXT_LEN
        context_img, context = context[:, :n_img], context[:, n_img:]
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(context).unflatten(2, (attn.heads, -1))
    out_img = None
    if context_img is not None:
        key_img = attn.norm_added_k(attn.add_k_proj(context_img)).unflatten(2, (attn.heads, -1))
        value_img = attn.add_v_proj(context_img).unflatten(2, (attn.heads, -1))
        out_img = _attend(attn, query, key_img, value_img).flatten(2, 3).type_as(query)
    out = _attend(attn, query, key, value)
    out = out.flatten(2, 3).type_as(query)
    if out_img is not None:
        out = out + out_img
    if adapter is not None:
        out = adapter(out)
    return attn.to_out[1](attn.to_out[0](out))


def attention_half(
    block: WanTransformerBlock,
    x: torch.Tensor,
    inputs: WanInputs,
    adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Self-attention and cross-attention of one Wan block: (B, L, D) -> (B, L, D)."""
    shift, scale, gate, _, _, _ = _modulation(block, inputs.temb6)
    h = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
    h = self_attention(block.attn1, h, inputs.rotary_emb)
    x = (x.float() + h * gate).type_as(x)
    h = block.norm2(x.float()).type_as(x)
    return x + cross_attention(block.attn2, h, inputs.context, adapter)


def ffn_half(block: WanTransformerBlock, x: torch.Tensor, inputs: WanInputs) -> torch.Tensor:
    """Feed-forward half of one Wan block: (B, L, D) -> (B, L, D)."""
    _, _, _, c_shift, c_scale, c_gate = _modulation(block, inputs.temb6)
    h = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
    h = block.ffn(h)
    return (x.float() + h.float() * c_gate).type_as(x)


def run_block(
    block: WanTransformerBlock,
    x: torch.Tensor,
    inputs: WanInputs,
    adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A whole Wan block; without an adapter this is ``block.forward`` itself."""
    if adapter is None:
        return block(x, inputs.context, inputs.temb6, inputs.rotary_emb)
    return ffn_half(block, attention_half(block, x, inputs, adapter), inputs)


def output_head(wan: WanTransformer3DModel, x: torch.Tensor, inputs: WanInputs) -> torch.Tensor:
    """Wan output norm, projection and unpatchify: (B, L, D) -> (B, C_out, F, H8, W8)."""
    shift, scale = (wan.scale_shift_table.to(inputs.temb.device) + inputs.temb.unsqueeze(1)).chunk(2, dim=1)
    x = (wan.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = wan.proj_out(x)
    p_t, p_h, p_w = wan.config.patch_size
    f, h, w = inputs.grid
    b = x.shape[0]
    x = x.reshape(b, f, h, w, p_t, p_h, p_w, -1)  # (B, f, h, w, pt, ph, pw, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def build_wan_transformer(wan_config: dict, device: torch.device | str | None = None) -> WanTransformer3DModel:
    """Instantiate a randomly initialised Wan transformer (``device='meta'`` allocates nothing)."""
    kwargs = dict(wan_config)
    kwargs["patch_size"] = tuple(kwargs["patch_size"])
    with torch.device(device or "cpu"):
        model = WanTransformer3DModel(**kwargs)
    return model


def rebuild_rope(wan: WanTransformer3DModel, device: torch.device | str) -> None:
    """Recreate the (non-persistent) RoPE tables on ``device`` in their native precision.

    Needed after building on the meta device and loading with ``assign=True``, and after
    a blanket ``.to(dtype)`` (RoPE must stay fp32/fp64).
    """
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    old = wan.rope
    with torch.device(device):
        wan.rope = WanRotaryPosEmbed(old.attention_head_dim, old.patch_size, old.max_seq_len)
