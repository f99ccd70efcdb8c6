"""Floor 2: the prediction heads (DPT depth / point map, camera head, activations, causal
temporal upsampling), their losses (:mod:`~fantasyworld.heads.losses`) and the heads registry
(:mod:`~fantasyworld.heads.registry`, the one place a head is declared). May import errors,
geometry and :mod:`fantasyworld.layers`.
"""
