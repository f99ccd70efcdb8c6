"""Floor 2: the prediction heads (DPT depth / point map, camera head, activations, causal
temporal upsampling). May import errors, geometry and :mod:`fantasyworld.layers`.
"""
