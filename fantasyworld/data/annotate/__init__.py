"""``fantasyworld data annotate``: the seed layout from raw videos.

Structure from motion (pycolmap) for the cameras, a monocular depth estimator
(transformers, or a plug-in) aligned to the SfM points for the depth, point maps
unprojected from both, written clip by clip with a quality report. See
:mod:`~fantasyworld.data.annotate.pipeline` and docs/data.md.
"""

from fantasyworld.data.annotate.alignment import AlignSettings
from fantasyworld.data.annotate.estimators import CameraEstimate, ClipContext, DepthPrediction
from fantasyworld.data.annotate.pipeline import REJECTIONS, AnnotateSettings, annotate_videos

__all__ = ["REJECTIONS", "AlignSettings", "AnnotateSettings", "CameraEstimate", "ClipContext", "DepthPrediction",
           "annotate_videos"]
