"""Reading the released checkpoints safely: ``model.pth`` (weights only, never pickled code)
and the Wan base weights it is compared with."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fantasyworld.errors import CheckpointError
from fantasyworld.models.official.keys import (
    OfficialCheckpointError,
    OfficialKeyMap,
)
from fantasyworld.models.wan_loading import (
    _safetensors_files,
    describe_key_mismatch,
    detect_layout,
)

# ------------------------------------------------------------------------------ reading
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "weights")


def _classify_load_error(path: Path, exc: Exception) -> OfficialCheckpointError:
    msg = str(exc)
    glob = re.search(r"GLOBAL ([\w.]+)", msg)
    if glob:
        return OfficialCheckpointError(
            f"{path}: refusing to load: the file contains pickled Python objects ({glob.group(1)}) that would "
            "execute code when unpickled; a weights file needs only tensors. Re-save it as a plain state dict "
            "of tensors (or safetensors) from a trusted environment."
        )
    return OfficialCheckpointError(
        f"{path}: not a readable PyTorch weights file (corrupted, truncated or not a checkpoint): "
        f"{type(exc).__name__}: {msg.splitlines()[0] if msg else ''}".rstrip()
    )


def _looks_like_legacy_torch(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    return head == b"\x80\x02"  # pickle protocol 2, as torch.save(_use_new_zipfile_serialization=False) writes


def read_official_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read ``model.pth`` safely.

    Uses ``torch.load(weights_only=True)`` (never runs pickled code), memory-mapped for the
    zip format so tensors are paged in on demand. A dict nested under one of
    ``state_dict``/``model``/``module``/``model_state_dict``/``weights`` is unwrapped and a
    common ``module.`` prefix (DDP) removed.

    Returns:
        ``(state dict, notes)``; notes describe any unwrapping.
    Raises:
        OfficialCheckpointError: missing file, corrupted file, pickled objects beyond
            tensors, or content that is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: file does not exist")
    is_zip = zipfile.is_zipfile(path)
    with path.open("rb") as fh:
        zip_header = fh.read(4) == b"PK\x03\x04"
    if zip_header and not is_zip:
        raise OfficialCheckpointError(f"{path}: corrupted or truncated checkpoint (a zip-format torch file whose "
                                      "central directory is missing); download it again")
    if not is_zip and not _looks_like_legacy_torch(path):
        raise OfficialCheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip nor the legacy torch.save "
                                      "format); the file is corrupted or of another kind")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
            ImportError, TypeError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise _classify_load_error(path, exc) from exc
    notes: list[str] = []
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            others = sorted(str(k) for k in obj if k != inner[0])
            notes.append(f"using the state dict under {inner[0]!r}" + (f"; ignoring {others}" if others else ""))
            obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), "
                                      f"got {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str))
    if bad:
        raise OfficialCheckpointError(f"{path}: entries that are not named tensors: "
                                      + describe_key_mismatch([], bad).split(": ", 1)[1])
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix")
    if not state:
        raise OfficialCheckpointError(f"{path}: the state dict is empty")
    return state, notes


# ------------------------------------------------------------------------------ Wan base
class WanBaseReader:
    """Lazy per-tensor access to the Wan base weights of a backbone directory (either
    layout, see :mod:`fantasyworld.models.wan_loading`), looked up by original Wan name.
    Tensors are read one at a time (safetensors, memory-mapped)."""

    def __init__(self, root: str | Path, keymap: OfficialKeyMap) -> None:
        self.root = Path(root)
        self.layout, folder = detect_layout(self.root)
        self.keymap = keymap
        self._index: dict[str, Path] = {}
        for f in _safetensors_files(folder):
            try:
                with safe_open(str(f), framework="pt", device="cpu") as fh:
                    for k in fh.keys():
                        self._index[k] = f
            except Exception as exc:  # safetensors raises several error types
                raise CheckpointError(f"{f}: unreadable safetensors file ({exc})") from exc
        self._handles: dict[Path, Any] = {}

    def _file_key(self, wan_name: str) -> str | None:
        if self.layout == "wan":
            return wan_name
        return self.keymap.wan_to_diffusers.get(wan_name)

    def has(self, wan_name: str) -> bool:
        key = self._file_key(wan_name)
        return key is not None and key in self._index

    def get(self, wan_name: str) -> torch.Tensor:
        """The base tensor stored under original Wan name ``wan_name``."""
        key = self._file_key(wan_name)
        if key is None or key not in self._index:
            raise KeyError(wan_name)
        f = self._index[key]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt", device="cpu")
        return self._handles[f].get_tensor(key)

    def close(self) -> None:
        self._handles.clear()
