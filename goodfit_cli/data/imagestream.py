"""An image-folder split read one image at a time, with timm's training-time augmentation.

`ImageSamples` is what `imagefolder` builds for every split: the labels are known from the
folder names without reading an image; `load()` reads them all (the device path, and every
test split; large images by threads), `read(i, epoch)` reads one (the streaming path's
workers). With an `augment` mapping, a training read goes through
`timm.data.create_transform(is_training=True)`: random resized crop to `size`, flips, colour
jitter, RandAugment (`auto_augment: rand-m9-mstd0.5`), its random numbers seeded per sample by
the loader (data/stream.py); every other read goes through the eval transform (resize, centre
crop). Images come out uint8 (H, W, 3).

A bad image is an ArgError naming the task's split (`new.train`) inside the data builder, and
a UserError naming the recipe's `data.args.new.train` once the session has set `where`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from goodfit_cli.core.args import ArgError
from goodfit_cli.core.distributed import cpus_per_rank
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.progress import ITEMS_PER_REPORT, work
from goodfit_cli.data.base import Split

# `load()` reads a folder's images with threads when its first image has at least this many
# pixels: PIL's decoding and resizing release the GIL, the rest of a read does not. 1 000 images,
# 2 cores, 2 threads against one (benchmarks/image_load.py): JPEGs of 400x300 or 256x256 read at
# 224x224 0.57-0.71 of the time; of 128x128, 1.09-1.25; PNGs of 32x32, 2.9-3.6 (slower)
THREADED_PIXELS = 256 * 256
MAX_THREADS = 8
AUGMENT = {"scale": None, "ratio": None, "hflip": 0.5, "vflip": 0.0, "color_jitter": None,
           "auto_augment": None}  # timm's create_transform arguments, goodfit's defaults


@contextlib.contextmanager
def bombs_refused() -> Iterator[None]:
    """PIL's decompression-bomb warning raised as an error in the block (the filter is the
    process's: threads reading inside the block see it too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB; a 16-bit greyscale image (PIL's 'I;16' modes) keeps its top 8 bits
    (PIL's own conversion clips every value over 255: a mid-grey 16-bit PNG became white)."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    return img.convert("RGB")


def read_image(ds, i: int, key: str, guard: bool = True) -> tuple[Image.Image, int]:
    """Sample i of timm's dataset as an RGB image, and its timm class index. `guard`: set the
    bomb filter here (False: the caller holds `bombs_refused`; warnings' filters are not
    thread-safe to change per image)."""
    try:  # through the reader: timm's dataset would skip an unreadable image silently
        raw, target = ds.reader[i]
        # over PIL's pixel limit: refused, never a stray warning; the file closed once decoded
        with contextlib.closing(raw), bombs_refused() if guard else contextlib.nullcontext():
            return rgb(Image.open(raw)), target
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        raise ArgError(key, f"image {ds.filename(i, absolute=True)} declares "
                       f"{n.group(1) if n else 'more'} pixels, over PIL's safe limit of "
                       f"{Image.MAX_IMAGE_PIXELS}; it is damaged or a decompression bomb "
                       "(resize or remove it)") from None
    except (OSError, ValueError, SyntaxError, tarfile.TarError) as e:  # PIL's UnidentifiedImageError
        # is an OSError
        raise ArgError(key, f"cannot read image {ds.filename(i, absolute=True)}: "
                       f"{type(e).__name__}") from None


def mixed_sizes(name: str, shape: tuple, first_name: str, first_shape: tuple) -> str:
    return (f"{name} is {shape[1]}×{shape[0]} but {first_name} is {first_shape[1]}×"
            f"{first_shape[0]}; set data.args.size to resize them")


def _pair(key: str, v: Any) -> tuple[float, float]:
    if (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in v)):
        return (float(v[0]), float(v[1]))
    raise ArgError(key, f"expected [low, high] of positive numbers, got {v!r}")


def train_transform(augment: Any, size: tuple[int, int] | None, interpolation: str):
    """timm's training transform for the recipe's `augment` mapping (None: no augmentation)."""
    if augment is None:
        return None
    if not isinstance(augment, Mapping):
        raise ArgError("augment", f"expected a mapping of {', '.join(AUGMENT)}, got {augment!r}")
    if size is None:
        raise ArgError("augment", "needs size (the random resized crop's output)")
    kw = dict(AUGMENT)
    for k, v in augment.items():
        if k not in AUGMENT:
            raise ArgError(f"augment.{k}", f"unknown key; expected one of {', '.join(AUGMENT)}")
        if k in ("scale", "ratio"):
            v = _pair(f"augment.{k}", v)
        elif k in ("hflip", "vflip") and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ArgError(f"augment.{k}", f"expected a probability in [0, 1], got {v!r}")
        elif k == "auto_augment" and not (v is None or isinstance(v, str)):
            raise ArgError("augment.auto_augment", f"expected a timm policy string such as "
                           f"'rand-m9-mstd0.5', got {v!r}")
        kw[k] = v
    from timm.data import create_transform  # deferred: timm imports slowly

    try:
        return create_transform((3, *size), is_training=True, interpolation=interpolation,
                                normalize=False, **kw)
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        raise ArgError("augment", f"timm's create_transform refused it: {e!r}") from None


def _targets(reader) -> list[int]:
    """Every sample's class index, for timm's folder and tar readers."""
    if getattr(reader, "targets", None) is not None:  # a tar of images (ReaderImageInTar)
        return list(reader.targets)
    return [t for _, t in reader.samples]  # a folder: (path, class index)


def _forget_open_tars(reader) -> None:
    """Drop the tar files a forked process inherited open (their offsets are shared): timm's
    reader reopens them on the next read."""
    state = getattr(reader, "tar_state", None)
    states = list(state.values()) if isinstance(state, dict) else [state] if state else []
    while states:
        st = states.pop()
        st.tf = None
        states.extend(st.children.values())


class ImageSamples:
    """The selected classes' images of one split, read on demand."""

    dtype = torch.uint8

    def __init__(self, ds, remap: dict[int, int], key: str, size: tuple[int, int] | None,
                 augment=None) -> None:
        self.ds, self.key, self.train_tf = ds, key, augment
        self.augments = augment is not None
        self.where = ""  # the recipe's data.args location, set by the session (errors name it)
        targets = _targets(ds.reader)  # timm's class index of each sample: no image read
        self.rows = [j for j, t in enumerate(targets) if t in remap]
        if not self.rows:
            raise ArgError(key, "no image of the selected classes")
        self.y = torch.tensor([remap[targets[j]] for j in self.rows], dtype=torch.int64)
        self.first = ds.filename(self.rows[0], absolute=True)
        if size is not None:
            self.shape = (size[0], size[1], 3)
        else:  # every image must have the first one's size
            img, _ = read_image(ds, self.rows[0], key)
            self.shape = (img.height, img.width, 3)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> list[str]:
        """Each sample's file (a path in a folder, or a member of a tar shard)."""
        return [str(self.ds.filename(j, absolute=True)) for j in self.rows]

    def nbytes(self) -> int:
        return len(self.rows) * int(np.prod(self.shape))

    def read(self, i: int, epoch: int | None, guard: bool = True) -> torch.Tensor:
        """Image i as uint8 (H, W, 3): augmented when `epoch` is given and the split augments
        (`guard`: read_image's)."""
        if self._pid != os.getpid():  # a worker: tar shards are reopened in each process
            self._pid = os.getpid()
            _forget_open_tars(self.ds.reader)
        j = self.rows[i]
        try:
            img, _ = read_image(self.ds, j, self.key, guard)
            tf = self.train_tf if epoch is not None and self.train_tf is not None else self.ds.transform
            img = tf(img) if tf is not None else img
            x = img.permute(1, 2, 0) if isinstance(img, torch.Tensor) else torch.from_numpy(np.array(img))
            if tuple(x.shape) != self.shape:
                raise ArgError(self.key, mixed_sizes(self.ds.filename(j, absolute=True),
                                                     tuple(x.shape), self.first, self.shape))
        except ArgError as e:
            if not self.where:
                raise
            raise UserError(f"{loc(self.where, e.key)}: {e.message}") from None
        return x.contiguous()

    def load(self, threads: int | None = None) -> Split:
        """Every selected image, un-augmented, in memory: (N, H, W, 3) uint8 and (N,) labels
        (`load_rows` of them all)."""
        return self.load_rows(None, threads)

    def load_rows(self, rows: Tensor | None, threads: int | None = None) -> Split:
        """Images `rows` (None: all), un-augmented, in memory, written in place (one copy in
        memory, never a list and its stack). Large images in a folder are read by `threads`
        threads (None: `reading_threads()`), each a contiguous run of images; the result, and
        the first bad image's error, are the sequential read's."""
        idx = list(range(len(self))) if rows is None else [int(r) for r in rows]
        n = len(idx)
        x = torch.empty((n, *self.shape), dtype=torch.uint8)
        y = self.y if rows is None else self.y[rows]
        if threads is None:  # a probe of a row or two never pays for threads (nor asks)
            threads = self.reading_threads() if n >= 2 else 1

        def run(lo: int, hi: int, guard: bool = True, advance=None) -> None:
            for k in range(lo, hi):
                x[k] = self.read(idx[k], None, guard)
                if advance is not None and (k + 1) % ITEMS_PER_REPORT == 0:
                    advance(k + 1)

        with work(f"reading {self.key} images", n) as advance:  # progress, where the CLI shows it
            if threads <= 1 or n < 2:
                run(0, n, advance=advance)
                advance(n)
                return Split(x, y)
            step = -(-n // (threads * 4))  # a few runs per thread: one slow file delays little
            with bombs_refused(), ThreadPoolExecutor(threads) as pool:
                runs = [pool.submit(run, lo, min(lo + step, n), False)
                        for lo in range(0, n, step)]
                try:
                    for i, f in enumerate(runs):
                        f.result()  # in order: the first bad run's first bad image is raised
                        advance(min((i + 1) * step, n))
                except BaseException:  # a bad image, ^C: the runs not started are not read
                    for f in runs:
                        f.cancel()
                    raise
        return Split(x, y)

    def reading_threads(self) -> int:
        """Threads `load()` reads with: 1 for a tar shard (its reader is not thread-safe) or
        images under THREADED_PIXELS (threads are slower there), else the CPUs this process
        may use (shared with the other ranks on this machine), at most MAX_THREADS."""
        from timm.data.readers.reader_image_folder import ReaderImageFolder

        if not isinstance(self.ds.reader, ReaderImageFolder) or len(self) < 2:
            return 1
        try:
            raw, _ = self.ds.reader[self.rows[0]]
            with contextlib.closing(raw), bombs_refused(), Image.open(raw) as img:  # the header
                w, h = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
                Image.DecompressionBombError):
            return 1  # the sequential read names it
        if w * h < THREADED_PIXELS:
            return 1
        return min(MAX_THREADS, cpus_per_rank())  # torchrun's ranks share the CPUs
