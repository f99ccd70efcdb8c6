"""FantasyWorld: geometry-consistent video world model on a frozen Wan2.1 backbone.

Letter legend used in shapes across the package:
B batch, T pixel frames, F latent frames, H/W pixels, h/w tokens per frame,
L tokens, D width, C channels.

Camera convention used everywhere inside the package: OpenCV axes (x right, y down,
z forward), 4x4 world-to-camera (w2c) matrices, pixel intrinsics
K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] at the working resolution.
"""

__version__ = "0.1.0"
