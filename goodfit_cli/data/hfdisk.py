"""Hugging Face `datasets` folders written by `save_to_disk`, one per split: an image or a text
column and a label column (`pip install 'goodfit[hf]'`).

`load_from_disk` reads the folder's Arrow files (no code, nothing downloaded). An image column
(PIL images, as the `Image` feature decodes them) becomes uint8 (N, H, W, C) RGB, brought to
`size` by timm's eval transform when given, as imagefolder does: resized to size / `crop_pct`
(both sides: `crop_mode` squash, the default here; the short side: center), then the centre
`size` cut (a --base's timm pretrained_cfg or transformers image processor sets what the recipe
does not); a text column is tokenised as the text dataset does (data/text.py). A
`ClassLabel` label column keeps its names; a base folder's label2id, when it names its classes,
decides the ids first (`labels_from`, which a transformers --base sets; text: its tokenizer's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from goodfit_cli.core.args import ArgError
from goodfit_cli.core.progress import ITEMS_PER_REPORT, work
from goodfit_cli.data.base import Task
from goodfit_cli.data.imagefolder import eval_transform, image_size
from goodfit_cli.data.imagestream import rgb
from goodfit_cli.data.inputs import check_crop
from goodfit_cli.data.paths import task_paths
from goodfit_cli.data.table import labelled_tasks
from goodfit_cli.data.text import Tokenising, known_from, texts_of
from goodfit_cli.io import hf

RESAMPLING = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def _load(path: str, key: str) -> Any:
    datasets = hf.library("datasets", f"data.args.{key}: a save_to_disk folder")
    if not Path(path).is_dir():
        raise ArgError(key, f"{path} is not a folder written by save_to_disk")
    try:
        ds = datasets.load_from_disk(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a damaged or
        # foreign state.json / dataset_info.json reaches datasets as KeyError, AttributeError
        said = (str(e).strip().splitlines() or [""])[0][:160]
        said = said if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__} {said}"
        raise ArgError(key, f"cannot read {path} with datasets.load_from_disk ({said.strip()})"
                       ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise ArgError(key, f"{path} holds the splits {', '.join(ds)}; give one split's folder "
                       f"({path}/{next(iter(ds), 'train')})")
    return ds


def _declared(feature: Any) -> np.dtype | None:
    """The integer dtype a column's feature declares (Array2D/3D, a list of Value), or None."""
    for _ in range(4):
        name = getattr(feature, "dtype", None)
        if isinstance(name, str):
            try:
                dtype = np.dtype(name)
            except TypeError:  # the Image feature's "PIL.Image.Image"
                return None
            return dtype if dtype.kind in "ui" else None
        feature = getattr(feature, "feature", None)
    return None


def _pixels(value: Any, dtype: np.dtype | None, i: int, path: str, key: str) -> np.ndarray:
    """A row's array (H, W[, 1|3|4]) as uint8: uint8 as it is, uint16 by its top 8 bits (as a
    16-bit image file is read: data/imagestream.rgb), any other type only when every value is a
    whole number in 0..255; else an ArgError naming the row (never a cast modulo 256, a clip or
    a truncation; another shape, channels first, is refused too)."""
    a = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]  # greyscale with its channel axis
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ArgError(key, f"{path}: image {i} is an array of shape {tuple(a.shape)}; an image "
                       "is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): channels last")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype.kind in "uifb" and (a.size == 0 or (
            np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255
            and (a.dtype.kind != "f" or (a == np.round(a)).all()))):
        return a.astype(np.uint8)
    span = f" {a.min()}..{a.max()}" if a.size and a.dtype.kind in "uif" else ""
    raise ArgError(key, f"{path}: image {i} holds {a.dtype} values{span}; images are read as "
                   "8-bit: save uint8 (0..255) or 16-bit (uint16) pixels")


def _images(values: Any, path: str, key: str, transform: Any,
            dtype: np.dtype | None = None) -> torch.Tensor:
    """PIL images (or arrays; datasets' column, decoded row by row as iterated) -> uint8
    (N, H, W, 3) written into one array, through `transform` (imagefolder.eval_transform's)
    when given; progress reported (core/progress.py). `dtype`: the column's integer type."""
    from PIL import Image

    n, out = len(values), None
    with work(f"reading {key} images", n) as advance:
        for i, v in enumerate(values):
            if isinstance(v, Image.Image) and v.mode in ("I", "F"):  # 32-bit: PIL would clip
                v = np.asarray(v)
            img = v if isinstance(v, Image.Image) else Image.fromarray(
                _pixels(v, dtype, i, path, key))
            img = rgb(img) if transform is None else transform(rgb(img))
            arr = img.permute(1, 2, 0).numpy() if isinstance(img, torch.Tensor) else \
                np.asarray(img, dtype=np.uint8)
            if out is None:
                out = np.empty((n, *arr.shape), dtype=np.uint8)
            elif arr.shape != out.shape[1:]:
                raise ArgError(key, f"{path}: image {i} is {arr.shape[1]}x{arr.shape[0]}, "
                               f"image 0 {out.shape[2]}x{out.shape[1]}; set data.args.size")
            out[i] = arr
            if (i + 1) % ITEMS_PER_REPORT == 0:
                advance(i + 1)
        advance(n)
    if out is None:
        raise ArgError(key, f"{path} holds no rows")
    return torch.from_numpy(out)


def hf_disk(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], image: str | None = None,
            text: str | None = None, label: str = "label", size: Any = None,
            interpolation: str = "bilinear", tokenizer: str | None = None, max_length: int = 128,
            padding: str = "max_length", truncation: bool = True,
            labels_from: str | None = None, crop_pct: float = 1.0,
            crop_mode: str | None = None) -> dict[str, Task]:
    """Old and new tasks from save_to_disk folders (one per split). `labels_from`: a model
    folder whose config.json label2id gives its classes' ids first (a transformers --base);
    `crop_pct`, `crop_mode` (squash unless set): timm's eval crop, as imagefolder's."""
    if image is not None and text is not None:
        raise ArgError("image", "give image or text, not both")
    if interpolation not in RESAMPLING:
        raise ArgError("interpolation", f"expected one of {', '.join(RESAMPLING)}, got "
                       f"{interpolation!r}")
    hw = image_size(size)
    check_crop(crop_pct, crop_mode)
    crop_mode = crop_mode or "squash"  # `size` resized to, exactly, as before crop_pct
    where, loaded = {}, {}
    for name, spec in (("old", old), ("new", new)):
        where[name] = task_paths(name, spec, ctx, "a folder written by save_to_disk")
        for split, path in where[name].items():
            loaded[(name, split)] = _load(path, f"{name}.{split}")
    first = next(iter(loaded.values()))
    column = image or text or next((c for c in ("image", "text") if c in first.column_names), None)
    if column is None:
        raise ArgError("image", f"{where['old']['train']} has no 'image' or 'text' column "
                       f"(columns: {', '.join(first.column_names)}); set data.args.image or text")
    is_text = text is not None or (image is None and column == "text")
    names: list[str] | None = None
    for (t, s), ds in loaded.items():
        for col, arg in ((column, "text" if is_text else "image"), (label, "label")):
            if col not in ds.column_names:
                raise ArgError(f"{t}.{s}", f"{where[t][s]} has no column {col!r} (columns: "
                               f"{', '.join(ds.column_names)}); set data.args.{arg}")
        names = names or getattr(ds.features[label], "names", None)  # a ClassLabel's

    def labels(ds: Any, key: str, path: str) -> list[Any]:
        """The split's labels; a ClassLabel's ids become ITS names (each task's own)."""
        own = getattr(ds.features[label], "names", None) or names
        values = list(ds[label])
        if not own:
            return values
        bad = next((i for i, v in enumerate(values) if not 0 <= v < len(own)), None)
        if bad is not None:
            raise ArgError(key, f"{path}: row {bad}, column {label!r}: class id {values[bad]} "
                           f"is not one of its {len(own)} ClassLabel names")
        return [own[v] for v in values]

    raw = {k: labels(ds, f"{k[0]}.{k[1]}", where[k[0]][k[1]]) for k, ds in loaded.items()}
    if is_text:
        tokenising = Tokenising(tokenizer, max_length, padding, truncation, ctx.data_dir)
        inputs, record = tokenising({k: texts_of(ds[column], where[k[0]][k[1]], f"{k[0]}.{k[1]}",
                                                 column) for k, ds in loaded.items()})
        record = {**record, "text": column}
        known = known_from(labels_from, ctx.data_dir, tokenising.folder)
    else:
        tf = eval_transform(hw, interpolation, crop_pct, crop_mode)
        inputs = {k: _images(ds[column], where[k[0]][k[1]], f"{k[0]}.{k[1]}", tf,
                             _declared(ds.features[column])) for k, ds in loaded.items()}
        record = {"image": column, "size": list(hw) if hw else None, "interpolation": interpolation,
                  **({"crop_pct": crop_pct, "crop_mode": crop_mode} if hw else {})}
        known = known_from(labels_from, ctx.data_dir, Path(tokenizer) if tokenizer else None)
    if names and not known:
        known = {n: i for i, n in enumerate(names)}  # the ClassLabel's own ids
    read = {t: {s: (inputs[(t, s)], raw[(t, s)]) for s in where[t]} for t in where}
    tasks = labelled_tasks(read, where, (old, new), bool(names), known)
    for task in tasks.values():
        task.preprocessing = record
    return tasks
