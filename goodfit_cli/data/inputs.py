"""How a model's inputs are normalised: the statistics it was trained with, and where they came from.

A model is fed its inputs as it was trained. Images are stored as uint8 (N, H, W, C) and become
float (N, C, H, W) in [0, 1], then `(x - mean) / std` per channel; table features (float) become
`(x - mean) / std` per column when the model was trained on standardised features.

The statistics travel with the model: `InputSpec` is set on the model object (`goodfit_input`),
written into every checkpoint goodfit saves (metadata "input") and into run.json, and read back
when a checkpoint is loaded, so eval, compare and a later fine-tune feed each model what it saw.
Where they come from, first match wins:

1. the recipe (`data.args.normalize: {mean, std}`): source "recipe";
2. the checkpoint being loaded: goodfit's own metadata ("checkpoint"), else the `mean`/`std` of
   a model folder's config.json `pretrained_cfg` (timm, "config.json") or its image processor
   (transformers' preprocessor_config.json, "preprocessor_config.json");
3. the data (a table's `standardize: true`: statistics of the OLD task's training split,
   "old training split");
4. the default every goodfit model had before: images to [-1, 1] (mean = std = 0.5), tables as
   they are ("default").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from goodfit_cli.core.args import ArgError

IMAGE, TABLE = "image", "table"
ATTR = "goodfit_input"  # the model attribute that holds its InputSpec


@dataclass
class InputSpec:
    kind: str  # "image" (uint8 NHWC in) or "table" (float features)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "default"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.kind not in (IMAGE, TABLE):
            raise ValueError(f"input kind must be {IMAGE!r} or {TABLE!r}, got {self.kind!r}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std must have one value per channel/feature, got "
                             f"{len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            raise ValueError("mean must be finite and std finite and positive")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std),
                "source": self.source}

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> InputSpec | None:
        """The spec a checkpoint's metadata or run.json holds; None when it holds none or a bad one."""
        if not isinstance(d, dict):
            return None
        try:
            return cls(d.get("kind", IMAGE), tuple(d["mean"]), tuple(d["std"]),
                       source or str(d.get("source", "checkpoint")))
        except (KeyError, TypeError, ValueError):
            return None

    def with_source(self, source: str) -> InputSpec:
        return InputSpec(self.kind, self.mean, self.std, source)

    def _stats(self, x: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype, shape)
        if key not in self._cache:  # once per device/dtype: no host-to-device copy per batch
            with torch.inference_mode(False):  # kept for training too, even if first made in eval
                self._cache[key] = (
                    torch.tensor(self.mean, dtype=x.dtype).view(shape).to(x.device),
                    torch.tensor(self.std, dtype=x.dtype).view(shape).to(x.device))
        return self._cache[key]

    def normalise_images(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) in [0, 1] (owned by the caller) → normalised in place."""
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:  # one scalar: the fast path
            return x.sub_(self.mean[0]).div_(self.std[0])
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels but the input statistics "
                             f"have {len(self.mean)} ({self.source})")
        mean, std = self._stats(x, (1, -1, 1, 1))
        return x.sub_(mean).div_(std)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, F) features → (x - mean) / std per column (a new tensor)."""
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"the table has {x.shape[-1]} features but the input statistics "
                             f"have {len(self.mean)} ({self.source})")
        mean, std = self._stats(x, (-1,))
        return (x - mean) / std


DEFAULT_IMAGE = InputSpec(IMAGE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "default")


def spec_of(model: Any) -> InputSpec | None:
    """The InputSpec set on `model` (through DDP's `module` and torch.compile's `_orig_mod`)."""
    for _ in range(4):  # read from the objects' own dicts: it runs every batch, and a missing
        if not isinstance(model, torch.nn.Module):  # attribute through nn.Module.__getattr__
            return None  # costs an exception each time
        spec = vars(model).get(ATTR)
        if spec is not None:
            return spec
        inner = model._modules.get("module") or model._modules.get("_orig_mod")
        if inner is None:
            return None
        model = inner
    return None


def from_config(config: dict[str, Any] | None,
                processor: dict[str, Any] | None = None) -> InputSpec | None:
    """mean/std of a model folder: timm's `pretrained_cfg` in config.json, or a transformers
    image processor's `image_mean`/`image_std` (preprocessor_config.json; `do_normalize: false`
    is mean 0, std 1: the pixels in [0, 1] as they are)."""
    pairs = []
    if isinstance(config, dict):
        cfg = config.get("pretrained_cfg")
        if isinstance(cfg, dict):
            pairs.append((cfg.get("mean"), cfg.get("std"), "config.json"))
        pairs.append((config.get("image_mean"), config.get("image_std"), "config.json"))
    if isinstance(processor, dict):
        if processor.get("do_normalize") is False:
            return InputSpec(IMAGE, (0.0,) * 3, (1.0,) * 3, "preprocessor_config.json")
        pairs.append((processor.get("image_mean"), processor.get("image_std"),
                      "preprocessor_config.json"))
    for mean, std, source in pairs:
        if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)):
            try:
                return InputSpec(IMAGE, tuple(mean), tuple(std), source)
            except (TypeError, ValueError):
                return None
    return None


# PIL's resampling numbers, as a transformers processor's `resample` gives them
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
CROP_MODES = ("center", "squash", "border")  # timm's eval transform's crop_mode


def _hw(size: Any) -> tuple[int, int] | None:
    """A transformers processor's {"height": H, "width": W} as (H, W); None for another form."""
    if isinstance(size, dict) and all(isinstance(size.get(k), int) and size[k] > 0
                                      for k in ("height", "width")):
        return size["height"], size["width"]
    return None


def geometry(config: dict[str, Any] | None, processor: dict[str, Any] | None,
             crops: bool = True, default_crop: str = "center") -> dict[str, Any]:
    """Input size, interpolation and crop of a model folder: timm's `pretrained_cfg` in
    config.json (its crop_mode, centre when unset), else a transformers image processor
    (preprocessor_config.json): resized to exactly (height, width), the aspect not kept (timm's
    crop_mode squash), then, with `do_center_crop` and `crops` (a dataset that takes crop_pct),
    centre-cropped to `crop_size` (size: the crop, crop_pct: its share). `crop_mode` is given
    where it differs from `default_crop`, the one the dataset applies when unset."""
    found: dict[str, Any] = {}
    cfg = (config or {}).get("pretrained_cfg")
    if isinstance(cfg, dict):
        size = cfg.get("input_size")
        if isinstance(size, (list, tuple)) and len(size) == 3 and all(
                isinstance(v, int) and v > 0 for v in size):
            found["size"] = [int(size[1]), int(size[2])]
        if isinstance(cfg.get("interpolation"), str):
            found["interpolation"] = cfg["interpolation"]
        pct = cfg.get("crop_pct")
        if isinstance(pct, (int, float)) and not isinstance(pct, bool) and 0 < pct <= 1:
            found["crop_pct"] = float(pct)
        found["crop_mode"] = cfg["crop_mode"] if cfg.get("crop_mode") in CROP_MODES else "center"
    elif isinstance(processor, dict):
        size, crop = _hw(processor.get("size")), _hw(processor.get("crop_size"))
        if size is not None:
            found["size"], found["crop_mode"] = list(size), "squash"
            pct = crop[0] / size[0] if crop and crops and processor.get("do_center_crop") else 0
            if 0 < pct < 1 and math.floor(crop[0] / pct) != size[0]:
                pct = math.nextafter(pct, 0)  # timm resizes to floor(size / pct)
            if 0 < pct < 1 and all(math.floor(c / pct) == s for c, s in zip(crop, size)):
                found["size"], found["crop_pct"] = list(crop), pct  # timm: size / pct, crop
        if processor.get("resample") in RESAMPLE:
            found["interpolation"] = RESAMPLE[processor["resample"]]
    if found.get("crop_mode") == default_crop:
        del found["crop_mode"]
    return found


def check_crop(crop_pct: Any, crop_mode: Any) -> None:
    """A dataset's `crop_pct` (a share in (0, 1]) and `crop_mode` (one of CROP_MODES or None)."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or \
            not 0 < crop_pct <= 1:
        raise ArgError("crop_pct", f"expected a share in (0, 1], got {crop_pct!r}")
    if crop_mode is not None and crop_mode not in CROP_MODES:
        raise ArgError("crop_mode", f"expected one of {', '.join(CROP_MODES)}, got {crop_mode!r}")


def table_statistics(x: torch.Tensor, source: str = "old training split") -> InputSpec:
    """Per-column mean and std of float features (a constant column gets std 1: left centred)."""
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return InputSpec(TABLE, tuple(mean.tolist()), tuple(std.tolist()), source)


def recorded(model: Any) -> dict[str, Any] | None:
    """What a checkpoint's metadata and run.json record of `model`'s inputs."""
    spec = spec_of(model)
    return spec.to_dict() if spec is not None else None
