"""Raw-data loader: batch dict, sampling, identical crop/resize of every modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fantasyworld.data.formats import read_video
from fantasyworld.data.loader import RawClipDataset, build_dataloader
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.data.transforms import sample_frame_indices
from fantasyworld.geometry.cameras import project_points


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize_dataset(tmp_path_factory.mktemp("loader") / "ds", num_clips=3, num_frames=13,
                              height=32, width=48, seed=5, workers=1)


def test_batch_dict_keys_shapes_and_ranges(root):
    ds = RawClipDataset(root, num_frames=5, height=16, width=16, stride=2)
    batch = next(iter(build_dataloader(ds, batch_size=2, shuffle=False)))
    assert batch["video"].shape == (2, 3, 5, 16, 16) and batch["video"].dtype == torch.float32
    assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0 and batch["video"].std() > 0.1
    assert batch["depth"].shape == (2, 5, 16, 16) and batch["depth"].dtype == torch.float32
    assert batch["points"].shape == (2, 5, 16, 16, 3) and batch["valid"].dtype == torch.bool
    assert batch["w2c"].shape == (2, 5, 4, 4) and batch["intrinsics"].shape == (2, 5, 3, 3)
    assert batch["clip_id"] == ["clip_00000", "clip_00001"] and len(batch["prompt"]) == 2
    torch.testing.assert_close(batch["frame_indices"][0], torch.tensor([0, 2, 4, 6, 8]))
    # depth is zero exactly where invalid
    assert (batch["depth"][~batch["valid"]] == 0).all() and (batch["depth"][batch["valid"]] > 0).all()


def test_sampled_frames_match_video_and_cameras(root):
    ds = RawClipDataset(root, num_frames=5, stride=3)  # stored size: no resize
    item = ds[1]
    idx = item["frame_indices"].numpy()
    frames = read_video(root / "videos/clip_00001.mp4")[idx]
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["video"], expected)
    depth = np.load(root / "depth/clip_00001.npy")[idx]
    np.testing.assert_array_equal(item["depth"].numpy(), depth)


def test_resized_points_project_into_their_own_pixels(root):
    # the loader's crop/resize keeps depth, points and intrinsics consistent
    ds = RawClipDataset(root, num_frames=5, height=20, width=24, random=True, seed=3)
    item = ds[0]
    k = item["intrinsics"].double().numpy()
    w2c = item["w2c"].double().numpy()
    pts = item["points"].double().numpy().reshape(5, -1, 3)
    uv, z = project_points(pts, w2c, k)
    valid = item["valid"].numpy().reshape(5, -1)
    v, u = np.meshgrid(np.arange(20), np.arange(24), indexing="ij")
    for t in range(5):
        m = valid[t]
        np.testing.assert_array_equal(np.floor(uv[t, m, 0]), u.reshape(-1)[m])
        np.testing.assert_array_equal(np.floor(uv[t, m, 1]), v.reshape(-1)[m])
        np.testing.assert_allclose(z[t, m], item["depth"][t].numpy().reshape(-1)[m], rtol=1e-5)


def test_random_sampling_is_seeded_and_varies(root):
    a = RawClipDataset(root, num_frames=5, height=16, width=16, random=True, seed=1)
    b = RawClipDataset(root, num_frames=5, height=16, width=16, random=True, seed=1)
    torch.testing.assert_close(a[2]["video"], b[2]["video"])
    starts = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        starts.add(int(a[2]["frame_indices"][0]))
    assert len(starts) > 1 and max(starts) <= 13 - 5


def test_frame_index_sampling():
    np.testing.assert_array_equal(sample_frame_indices(81, 21, 4, start=0), np.arange(0, 81, 4))
    assert sample_frame_indices(80, 21, 4) is None
    np.testing.assert_array_equal(sample_frame_indices(20, 5, 1, start=100), np.arange(15, 20))


def test_dataloader_with_worker_processes(root):
    ds = RawClipDataset(root, num_frames=5, height=16, width=16)
    loader = build_dataloader(ds, batch_size=1, num_workers=2, shuffle=True, seed=0)
    ids = sorted(b["clip_id"][0] for b in loader)
    assert ids == ["clip_00000", "clip_00001", "clip_00002"]
