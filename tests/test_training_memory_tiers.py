"""Training memory tiers: the registry, the config keys and each tier's mechanics on the tiny preset.

Each mechanism is compared with the 80 tier (no offload, fp32 AdamW, bf16/fp32 Wan linears) on
the same batch and weights:

* activation offload (``save_on_cpu``): exact, the saved tensors come back unchanged;
* FP8 frozen linears: the forward changes by the e4m3 rounding of every Wan linear (weights and
  activations); on the tiny preset the loss moves by ~1e-4 relative, bound 1e-3;
* 8-bit AdamW: losses and gradients of the first step are the optimizer's inputs (identical);
  after one step the update differs from fp32 AdamW's by the moments' quantisation: the first
  update is ``lr * m / (sqrt(v) + eps) ~ lr * sign(g)``, so it is compared elementwise to
  fp32 AdamW's within 0.01 lr (measured: 2.4e-4 lr) where the gradient is not tiny.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from fantasyworld.errors import ConfigError
from fantasyworld.inference.testing import tiny_model
from fantasyworld.layers.fp8_linear import swap_linears_to_fp8
from fantasyworld.training.config import config_from_dict, load_config
from fantasyworld.training.losses import per_sample_losses
from fantasyworld.training.memory_tiers import NO_TIER, TRAIN_MEMORY_TIERS, resolve_memory
from fantasyworld.training.optimizers import OPTIMIZERS, build_optimizer
from tests.test_pixel_frame_subset import tiny_inputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(**top) -> dict:
    return {"data": {"root": "data"}, "model": {"preset": "tiny"}, **top}


def test_tier_registry_and_precedence() -> None:
    assert tuple(TRAIN_MEMORY_TIERS) == ("80", "48", "24")
    assert resolve_memory(config_from_dict(_cfg())) == NO_TIER
    t24 = resolve_memory(config_from_dict(_cfg(memory_tier=24)))
    assert t24 == TRAIN_MEMORY_TIERS["24"].settings
    assert (t24.optimizer, t24.fp8_frozen, t24.activation_offload, t24.checkpointing) == \
        ("adamw8bit", True, "heads", "layer")
    # an explicit key wins over the tier; an unset one takes the tier's value
    mixed = resolve_memory(config_from_dict(_cfg(memory_tier="48", model={"preset": "tiny", "checkpointing":
                                                                          "selective"}, optim={"optimizer": "adamw"})))
    assert (mixed.checkpointing, mixed.optimizer, mixed.checkpoint_heads) == ("selective", "adamw", True)
    legacy = resolve_memory(config_from_dict(_cfg(model={"preset": "tiny", "gradient_checkpointing": True})))
    assert legacy.checkpointing == "layer"


@pytest.mark.parametrize("data,message", [
    ({"memory_tier": 32}, r"memory_tier '32' is unknown; choose one of 80, 48, 24"),
    ({"optim": {"optimizer": "adam8bit"}}, r"optim.optimizer 'adam8bit' is unknown.*did you mean 'adamw8bit'"),
    ({"model": {"preset": "tiny", "activation_offload": "head"}}, r"model.activation_offload 'head' is unknown"),
    ({"model": {"preset": "tiny", "dpt_resize": "bicubic"}}, r"model.dpt_resize 'bicubic' is unknown"),
])
def test_bad_memory_keys_name_the_key(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_cfg(**data))


@pytest.mark.parametrize("name", ["stage1_t2v_1.3b_48gb", "stage2_t2v_1.3b_48gb", "stage1_t2v_1.3b_24gb",
                                  "stage2_t2v_1.3b_24gb"])
def test_tier_config_files_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    tier = TRAIN_MEMORY_TIERS[cfg.memory_tier]
    assert name.endswith(f"_{tier.name}gb")
    assert resolve_memory(cfg) == tier.settings
    assert cfg.data.num_frames == tier.frames_1p3b and str(tier.frames_1p3b) in cfg.data.cache_dir
    assert cfg.stage == int(name[5]) and cfg.model.preset == "wan2.1-t2v-1.3b"


def test_fast_config_file_loads_selective_and_compiled() -> None:
    cfg = load_config(CONFIGS / "stage2_t2v_1.3b_fast.yaml")
    base = load_config(CONFIGS / "stage2_t2v_1.3b.yaml")
    assert cfg.model.checkpointing == "selective" and cfg.model.compile and cfg.memory_tier is None
    assert cfg.model.checkpoint_heads == base.model.checkpoint_heads and cfg.data.num_frames == 81
    assert (cfg.optim.lr, cfg.steps, cfg.stage, cfg.init_from) == (base.optim.lr, base.steps, 2, base.init_from)


def _loss_and_grads(model, inputs, stage: int = 2):
    model.zero_grad(set_to_none=True)
    out = model(inputs["latents"], inputs["timestep"], inputs["text_emb"], plucker=inputs.get("plucker"), stage=stage)
    total, _ = per_sample_losses(out, inputs, stage=stage)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("offload", ["heads", "all"])
def test_activation_offload_is_exact(offload: str) -> None:
    model = tiny_model().train()
    model.checkpointing = "layer" if offload == "heads" else "none"
    inputs = tiny_inputs(2)
    ref_loss, ref = _loss_and_grads(model, inputs)
    model.activation_offload = offload
    loss, got = _loss_and_grads(model, inputs)
    assert torch.equal(loss, ref_loss) and all(torch.equal(got[n], ref[n]) for n in ref)
    with pytest.raises(ValueError, match="activation_offload must be one of none, heads, all"):
        model.activation_offload = "cpu"


def test_fp8_frozen_linears_train_within_the_e4m3_rounding() -> None:
    model = tiny_model().train()
    inputs = tiny_inputs(2)
    ref_loss, ref = _loss_and_grads(model, inputs)
    assert swap_linears_to_fp8(model.transformer.blocks, lambda name, _: True)
    loss, got = _loss_and_grads(model, inputs)
    assert abs(float(loss - ref_loss)) <= 1e-3 * abs(float(ref_loss))
    assert got.keys() == ref.keys()  # every trainable parameter still gets its gradient
    num = sum(float((got[n] - ref[n]).square().sum()) for n in ref)
    den = sum(float(ref[n].square().sum()) for n in ref)
    assert (num / den) ** 0.5 < 0.1  # the gradients' relative error, e4m3 rounding through the Wan blocks


@pytest.mark.parametrize("optimizer,module", [("adamw8bit", "torchao.optim.adam"), ("adamw8bit-bnb", "bitsandbytes")])
def test_8bit_adamw_step_follows_fp32_adamw(monkeypatch, optimizer: str, module: str) -> None:
    package = pytest.importorskip(module, reason=f"{module.split('.')[0]} (the lowmem extra) is not installed")
    if optimizer == "adamw8bit":
        # torchao compiles its per-parameter step; run it eagerly here (same arithmetic, no compiler on the CPU)
        monkeypatch.setattr(package.torch, "compile", lambda fn, **_: fn)
    lr = 1e-3
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 256), (256, 32), (4096,), (10,)]  # >= 4096 elements: 8-bit moments; smaller: fp32
    params32 = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    params8 = [torch.nn.Parameter(p.detach().clone()) for p in params32]
    grads = [torch.randn(s, generator=g) * torch.logspace(-2, 0, s[-1]) for s in shapes]
    cpu = torch.device("cpu")
    opt32 = build_optimizer("adamw", [{"params": params32, "weight_decay": 0.01}], lr, (0.9, 0.999), 1e-8, cpu)
    opt8 = build_optimizer(optimizer, [{"params": params8, "weight_decay": 0.01}], lr, (0.9, 0.999), 1e-8, cpu)
    if optimizer == "adamw8bit":
        assert type(opt8).__name__ == "AdamW8bit"
    else:
        assert type(opt8).__module__.startswith("bitsandbytes")
    for p32, p8, gr in zip(params32, params8, grads):
        p32.grad, p8.grad = gr.clone(), gr.clone()
    opt32.step()
    opt8.step()
    for p32, p8, gr in zip(params32, params8, grads):
        big = gr.abs() > 1e-3  # Adam's first step is lr * sign(g) where |g| >> eps: the 8-bit moments keep it
        diff = (p8.detach() - p32.detach()).abs()[big]
        assert diff.max() <= 0.01 * lr, float(diff.max())
    if optimizer == "adamw8bit-bnb":
        assert opt8.state[params8[0]]["state1"].dtype == torch.uint8  # a large tensor's moments are 8-bit
        assert opt8.state[params8[3]]["state1"].dtype == torch.float32  # a small one's stay fp32
    assert OPTIMIZERS[optimizer].state_bytes_per_param < OPTIMIZERS["adamw"].state_bytes_per_param


@pytest.mark.parametrize("optimizer,package", [("adamw8bit", "torchao"), ("adamw8bit-bnb", "bitsandbytes")])
def test_8bit_optimizer_without_its_package_is_a_config_error(monkeypatch, optimizer: str, package: str) -> None:
    real_import = builtins.__import__

    def without_package(name, *args, **kwargs):
        if name.startswith(package):
            raise ImportError(f"No module named '{package}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_package)
    message = rf"optim.optimizer={optimizer} needs {package}.*pip install -e \"\.\[lowmem\]\""
    with pytest.raises(ConfigError, match=message):
        build_optimizer(optimizer, [{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1e-3, (0.9, 0.999), 1e-8,
                        torch.device("cpu"))
