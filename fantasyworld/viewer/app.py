"""The viser scene of one output folder, and the blocking server of ``fantasyworld view``.

Scene tree (world frame and cameras as in :mod:`fantasyworld.viewer.outputs`: OpenCV
axes, so the viewer's up direction is -y; cameras are 4x4 world-to-camera):

* ``/cloud``: the fused coloured cloud, the points at or above the ``confidence
  percentile`` slider's percentile of the cloud's confidences (0 keeps every point);
* ``/frame_points``: frame ``t``'s point map (``frame`` slider), filtered by the same
  percentile of that frame's confidences;
* ``/cameras/<set>/<t:03d>``: one frustum per camera of each set (``predicted`` red,
  ``requested`` blue, ``ground_truth`` green), each set toggled by a checkbox;
* ``/selected``: the predicted camera of frame ``t``, showing that frame's image; the same
  image is in the GUI panel.

:func:`build_viewer` does not block, so tests build the scene into a server on port 0 and
read the handles; :func:`serve` is the command's loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.geometry.cameras import invert_se3
from fantasyworld.inference.glb import FrustumSet, frustum_depth
from fantasyworld.viewer.outputs import OutputScene, load_output

__all__ = ["SceneViewer", "build_viewer", "confidence_mask", "serve"]

_UP = "-y"  # OpenCV world: y points down


def confidence_mask(conf: np.ndarray, percentile: float) -> np.ndarray:
    """``conf >= percentile-th percentile of the finite confidences`` (0: every finite value)."""
    conf = np.asarray(conf, dtype=np.float32)
    finite = np.isfinite(conf)
    if percentile <= 0 or not finite.any():
        return finite
    return finite & (conf >= np.percentile(conf[finite], percentile))


def _wxyz(rot: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(rot).wxyz


@dataclass
class SceneViewer:
    """The scene of one :class:`OutputScene` in a viser server, and its controls.

    Attributes:
        scene: what is shown.
        server: the ``viser.ViserServer`` serving it.
        frustum_scale: frustum size in scene units; point_size: current point size.
        cloud: ``/cloud`` point-cloud handle (replaced whenever a slider moves).
        frame_points: ``/frame_points`` handle, or None without point maps.
        selected: ``/selected`` frustum handle (frame ``t``'s predicted camera + image).
        frustums: frustum handles per camera set, T each.
        set_toggles: one checkbox per camera set.
        conf_slider, frame_slider, size_slider: GUI sliders.
        frame_image: GUI image of frame ``t``.
        shown_points: points currently in ``/cloud``.
    """

    scene: OutputScene
    server: object
    frustum_scale: float
    point_size: float
    cloud: object = None
    frame_points: object = None
    selected: object = None
    frustums: dict[str, list] = field(default_factory=dict)
    set_toggles: dict[str, object] = field(default_factory=dict)
    conf_slider: object = None
    frame_slider: object = None
    size_slider: object = None
    frame_image: object = None
    shown_points: int = 0

    # ------------------------------------------------------------------ updates
    def show_cloud(self, percentile: float) -> int:
        """Re-draw ``/cloud`` with the points at or above ``percentile``; returns their number."""
        s = self.scene
        keep = confidence_mask(s.conf, percentile)
        self.cloud = self.server.scene.add_point_cloud(
            "/cloud", s.xyz[keep].astype(np.float32), s.rgb[keep], point_size=self.point_size,
            point_shape="rounded")
        self.shown_points = int(keep.sum())
        return self.shown_points

    def show_frame(self, t: int) -> None:
        """Frame ``t``: its point map, its predicted camera with the image, the GUI image."""
        s = self.scene
        t = int(np.clip(t, 0, s.num_frames - 1))
        image = s.frames[t]
        if s.point_maps is not None and s.point_conf is not None:
            keep = confidence_mask(s.point_conf[t], float(self.conf_slider.value))
            keep &= np.isfinite(s.point_maps[t]).all(-1)
            self.frame_points = self.server.scene.add_point_cloud(
                "/frame_points", s.point_maps[t][keep].astype(np.float32), image[keep],
                point_size=self.point_size, point_shape="rounded")
        cams = s.cameras.get("predicted") or next(iter(s.cameras.values()))
        self.selected = self._frustum("/selected", cams, t, color=(255, 200, 0), image=image, scale=1.5)
        self.frame_image.image = image

    # ------------------------------------------------------------------ building
    def _frustum(self, name: str, cams: FrustumSet, t: int, color, image=None, scale: float = 1.0):
        c2w = invert_se3(np.asarray(cams.w2c[t], dtype=np.float64))
        fy = float(cams.intrinsics[t][1, 1])
        fov = 2.0 * math.atan(cams.height / (2.0 * fy))
        return self.server.scene.add_camera_frustum(
            name, fov=fov, aspect=cams.width / cams.height, scale=scale * self.frustum_scale,
            color=color, image=image, wxyz=_wxyz(c2w[:3, :3]), position=c2w[:3, 3],
            thickness=0.05 * self.frustum_scale)

    def build(self) -> SceneViewer:
        s, server = self.scene, self.server
        server.scene.set_up_direction(_UP)
        self._initial_camera()
        gui = server.gui
        gui.add_markdown(f"**{s.kind}**: {s.name}  \n{len(s.xyz):,} points, {s.num_frames} frames")
        self.conf_slider = gui.add_slider("confidence percentile", min=0, max=99, step=1, initial_value=0)
        self.frame_slider = gui.add_slider("frame", min=0, max=s.num_frames - 1, step=1, initial_value=0)
        self.size_slider = gui.add_slider("point size", min=0.1 * self.point_size, max=5.0 * self.point_size,
                                          step=0.1 * self.point_size, initial_value=self.point_size)
        self.frame_image = gui.add_image(s.frames[0], label="selected frame")
        for name, cams in s.cameras.items():
            self.frustums[name] = [self._frustum(f"/cameras/{name}/{t:03d}", cams, t, cams.rgb())
                                   for t in range(len(cams.w2c))]
            toggle = gui.add_checkbox(f"show {name.replace('_', ' ')} cameras", initial_value=True)
            toggle.on_update(lambda _e, n=name, tg=toggle: self._toggle(n, tg.value))
            self.set_toggles[name] = toggle
        self.show_cloud(0)
        self.show_frame(0)

        @self.conf_slider.on_update
        def _(_event) -> None:
            self.show_cloud(float(self.conf_slider.value))
            self.show_frame(int(self.frame_slider.value))

        @self.frame_slider.on_update
        def _(_event) -> None:
            self.show_frame(int(self.frame_slider.value))

        @self.size_slider.on_update
        def _(_event) -> None:
            self.point_size = float(self.size_slider.value)
            self.show_cloud(float(self.conf_slider.value))
            self.show_frame(int(self.frame_slider.value))

        return self

    def _initial_camera(self) -> None:
        """Look at the cloud's median from behind and above the first camera (OpenCV world:
        behind is -z, above is -y)."""
        s = self.scene
        cams = next(iter(s.cameras.values()), None)
        origin = invert_se3(np.asarray(cams.w2c[0], dtype=np.float64))[:3, 3] if cams is not None else np.zeros(3)
        target = np.median(s.xyz, axis=0).astype(np.float64) if len(s.xyz) else origin + [0.0, 0.0, 1.0]
        dist = max(float(np.linalg.norm(target - origin)), 1e-3)
        self.server.initial_camera.look_at = target
        self.server.initial_camera.position = origin + np.array([0.0, -0.5, -1.0]) * dist

    def _toggle(self, name: str, visible: bool) -> None:
        for handle in self.frustums[name]:
            handle.visible = visible


def build_viewer(scene: OutputScene, server) -> SceneViewer:
    """Build ``scene`` (module docstring) into the viser ``server``; returns the handles.

    The frustum size is :func:`~fantasyworld.inference.glb.frustum_depth` of the scene and
    the point size 0.15 of it.
    """
    first = next(iter(scene.cameras.values()), None)
    depth = frustum_depth(scene.xyz, first.w2c) if first is not None else 0.1
    return SceneViewer(scene, server, frustum_scale=depth, point_size=0.15 * depth).build()


def serve(scene: OutputScene | str | Path, host: str = "127.0.0.1", port: int = 8080, clip: str | None = None,
          log: Callable[[str], None] = print) -> None:
    """``fantasyworld view``: serve ``scene`` (or the output folder it is read from, with
    ``clip``) until interrupted (Ctrl-C)."""
    import viser

    if not isinstance(scene, OutputScene):
        scene = load_output(scene, clip)
    server = viser.ViserServer(host=host, port=port, label=f"fantasyworld: {scene.source.name}", verbose=False)
    try:
        build_viewer(scene, server)
        extra = f"; evaluation clips: {', '.join(scene.clips)} (--clip)" if scene.clips else ""
        log(f"viewing {scene.kind} output {scene.source} at http://{host}:{server.get_port()} (Ctrl-C to stop){extra}")
        while True:
            time.sleep(1.0)
    finally:
        server.stop()
