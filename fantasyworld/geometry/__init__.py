"""Floor 1: the camera convention and camera files (imports only :mod:`fantasyworld.errors`).

OpenCV axes, 4x4 world-to-camera matrices, pixel intrinsics at the working resolution.
``cameras`` (SE(3) inverse, homogeneous, relative to frame 0, scene scale, unprojection,
intrinsics), ``pose_encoding`` (VGGT ``absT_quaR_FoV``), ``plucker``, ``rotation``,
``camera_io`` (the camera-file registry and one reader/writer per format), ``colmap``,
``camera_sequence``. See ``docs/architecture.md`` for the map of floors.
"""
