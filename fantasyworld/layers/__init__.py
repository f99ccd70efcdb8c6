"""Floor 2: building blocks of the geometry branch (geometry ViT blocks, bidirectional
cross-attention, 2D RoPE). May import :mod:`fantasyworld.errors` and :mod:`fantasyworld.geometry`.
"""
