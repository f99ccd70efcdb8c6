"""Floor 3: the whole network and what owns its weights.

``fantasyworld`` (:class:`~fantasyworld.models.fantasyworld.FantasyWorldModel`),
``geometry_branch``, ``irg_layer``, ``camera_conditioning``, ``wan_backbone`` (the frozen
Wan driven block by block), ``config`` (presets), ``wan_loading``, ``weights``
(``step-N.safetensors``), ``encoders`` (frozen VAE/UMT5/CLIP), ``flow_matching``,
``parallelize`` (checkpointing -> compile -> FSDP from outside), ``official`` (released
weights), ``inventory``. May import floors 0-2.
"""
