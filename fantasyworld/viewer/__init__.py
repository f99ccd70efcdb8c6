"""``fantasyworld view OUT_DIR``: an interactive 3D viewer of an output folder, on viser.

:mod:`~fantasyworld.viewer.app` builds the scene of a
:class:`~fantasyworld.viewer.outputs.OutputScene` into a ``viser.ViserServer`` (fused
cloud with a confidence slider, per-frame point maps on a frame slider, camera frustums of
every trajectory, the selected frame's image) and serves it. viser is an optional
dependency (``pip install -e ".[view]"``).
"""
