"""Image classification sets from class-per-folder trees or image tar shards, read with timm.

Each split is a folder `<split>/<class name>/<image>` (any depth below the class folder) or a
`.tar` of such paths, read by `timm.data.create_dataset` and resized/cropped by
`timm.data.create_transform` (eval mode: resize the short side, centre crop to `size`). Images
are kept as uint8 (N, H, W, C): in memory and on the device (the fast path), or, for a training
split the session streams (data/stream.py), read image by image (data/imagestream.py), where
`augment` applies timm's training transform; the loop normalises them with `to_model_input`.

Class ids are global: the old task's classes first (its `classes` list, else its train split's
folder names in natural order), then the new task's classes that are not old ones; a model
folder that names its classes (`labels_from`, which a --base naming them sets: config.json's
label2id, timm's label_names) gives its names their ids first, so a base's classes keep their
head rows. A task's `classes` list selects folders by name, or by integer: a label id of
`labels_from` when it names classes (as text and hf_disk read integers: the class the base
calls 0), else the folder's position in name order.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Mapping, Sequence

import numpy as np

from goodfit_cli.core.args import ArgError
from goodfit_cli.data.base import Task
from goodfit_cli.data.imagestream import ImageSamples, train_transform
from goodfit_cli.data.inputs import check_crop
from goodfit_cli.data.paths import task_paths
from goodfit_cli.data.text import known_from


def _open(path: str, key: str, size: tuple[int, int] | None, interpolation: str,
          crop_pct: float = 1.0, crop_mode: str | None = None):
    """timm's dataset over `path`, the empty class folders checked, with the eval transform."""
    from timm.data import create_dataset  # deferred: timm imports slowly

    if not os.path.exists(path):
        raise ArgError(key, f"not found: {path}")
    if os.path.isfile(path):
        _check_tar(path, key)
    try:
        ds = create_dataset("", root=path, split="train", search_split=False)
    except RuntimeError as e:  # timm: "Found 0 images in subfolders of ..."
        raise ArgError(key, f"{path} holds no images ({str(e).splitlines()[0]}); expected "
                       f"{path}/<class>/<image>") from None
    except (tarfile.TarError, ValueError, OSError) as e:
        raise ArgError(key, f"cannot read {path} ({type(e).__name__}: {e}); expected a folder "
                       "or a .tar of <class>/<image> files") from None
    _by_class_folder(ds.reader, path, key)
    classes = _class_to_idx(ds)
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if os.path.isdir(os.path.join(path, name)) and name not in classes:
                raise ArgError(key, f"class folder {os.path.join(path, name)} holds no images")
    if not len(ds):
        raise ArgError(key, f"{path} holds no images (class-per-folder: {path}/<class>/<image>)")
    ds.transform = eval_transform(size, interpolation, crop_pct, crop_mode)
    return ds


def eval_transform(size: tuple[int, int] | None, interpolation: str, crop_pct: float = 1.0,
                   crop_mode: str | None = None):
    """timm's eval transform of a PIL image to `size` (H, W) (resized to size / crop_pct, the
    short side for crop_mode center, both for squash; then the centre `size` cut), uint8 out;
    None without a size."""
    if size is None:
        return None
    from timm.data import create_transform  # deferred: timm imports slowly

    return create_transform((3, *size), is_training=False, crop_pct=crop_pct,
                            crop_mode=crop_mode, interpolation=interpolation, normalize=False)


def _by_class_folder(reader, path: str, key: str) -> None:
    """Each image's class is the folder under the split (`<split>/<class>/...`, any depth; a
    tar's top folder), not timm's innermost folder (`a/2020/x.png` and `b/2020/y.png` would both
    be class '2020'); a folder reached twice through a symbolic link (a loop) is refused: its
    images would count twice, or endlessly."""
    from timm.utils.misc import natural_key

    tar = getattr(reader, "root_is_tar", None)  # None: a folder (timm's ReaderImageFolder)
    if tar is False or (tar and any(s[1] is not None for s in reader.samples)):
        return  # a tar of tars: timm's own classes
    names = [s[0].name.removeprefix("./") for s in reader.samples] if tar else \
        [f[len(path):].lstrip(os.sep) for f, _ in reader.samples]  # os.walk(path): under path
    tops, seen, real = [], set(), {}  # real: a folder's real path -> the path it was met by
    for i, rel in enumerate(names):
        top, _, rest = rel.partition("/" if tar else os.sep)
        if not rest:  # timm's class '': "no folder for class ''" would follow
            raise ArgError(key, f"image {os.path.join(path, rel)} is not in a class folder: "
                           f"expected {path}/<class>/<image>")
        tops.append(top)
        if tar:
            continue
        d = os.path.dirname(reader.samples[i][0])
        if d not in seen:
            seen.add(d)
            other = real.setdefault(os.path.realpath(d), d)
            if other != d:
                raise ArgError(key, f"folder {d} is {other} again (through a symbolic link): "
                               "its images would count twice; remove the link")
    idx = {c: i for i, c in enumerate(sorted(set(tops), key=natural_key))}
    if tar:
        reader.targets = np.array([idx[c] for c in tops], dtype=reader.targets.dtype)
        reader.class_name_to_idx, reader.class_idx_to_name = idx, {i: c for c, i in idx.items()}
    else:
        reader.class_to_idx = idx
        reader.samples = [(f, idx[c]) for (f, _), c in zip(reader.samples, tops)]


def _check_tar(path: str, key: str) -> None:
    """A tar shard's headers, before timm reads it: a tar (not empty, not another format),
    every member inside the file (a header can declare 8 GiB in a 2 kB file), an image in it."""
    from timm.data.readers.img_extensions import get_img_extensions

    size = os.path.getsize(path)
    if size == 0:
        raise ArgError(key, f"{path} is empty (0 bytes); expected a .tar of <class>/<image> files")
    wanted = tuple(get_img_extensions(as_set=True)) + (".tar",)  # timm reads tars of tars too
    images = 0
    try:
        with tarfile.open(path) as tf:
            for m in tf:  # headers only; nothing is extracted
                if m.isfile() and m.offset_data + m.size > size:
                    raise ArgError(key, f"{path}: member {m.name!r} declares {m.size} bytes but "
                                   f"the file ends {size - m.offset_data} bytes after its header; "
                                   "the tar is truncated or damaged")
                images += m.isfile() and m.name.lower().endswith(wanted)
    except tarfile.TarError as e:
        why = str(e).splitlines()[-1].strip(" -)")  # the plain tar reader's reason
        raise ArgError(key, f"{path} is not a readable tar file ({why}); expected a .tar of "
                       "<class>/<image> files") from None
    if not images:
        raise ArgError(key, f"{path} holds no image member (.png, .jpg, .jpeg); expected "
                       "<class>/<image> files in it")


def _same_classes(ds, train, chosen: list[str], key: str) -> None:
    """A test or validation split holds a folder for each of the task's classes and none the
    training split lacks: a misnamed folder ('Zero' for 'zero') would otherwise be dropped, and
    a missing one would leave the split's numbers over fewer classes, both silently."""
    found, known = list(_class_to_idx(ds)), _class_to_idx(train)
    stray = [c for c in found if c not in known]
    if stray:
        raise ArgError(key, f"class folder {stray[0]!r} is not a class of the training split "
                       f"(its classes: {', '.join(known)}); rename or remove it")
    missing = [c for c in chosen if c not in found]
    if missing:
        raise ArgError(key, f"no folder for class {missing[0]!r} (the training split has it): "
                       "its numbers would leave that class out")


def _class_to_idx(ds) -> dict[str, int]:
    """Class name -> timm's index, for a folder reader or a tar reader."""
    reader = ds.reader
    return dict(getattr(reader, "class_to_idx", None) or reader.class_name_to_idx)


def image_size(size: Any) -> tuple[int, int] | None:
    """`size` as (height, width): an int is a square; None stays None."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if (isinstance(size, Sequence) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        return (size[0], size[1])
    raise ArgError("size", f"expected a positive integer or [height, width], got {size!r}")


def _selected(name: str, spec: Mapping[str, Any], found: list[str],
              known: Mapping[str, int], labels_from: Any) -> list[str]:
    """The task's class names: its `classes` (folder names, or integer ids), or all. An integer
    is a label id of `known` (a model folder's, as text and hf_disk read it) when there are
    such, else a position in `found`; an id `known` lacks is refused (not read as a position)."""
    chosen = spec.get("classes")
    if chosen is None:
        return found
    if isinstance(chosen, (str, bytes)) or not isinstance(chosen, Sequence):
        raise ArgError(f"{name}.classes", f"expected a list of folder names or ids, got {chosen!r}")
    by_id = {i: c for c, i in known.items()}
    out = []
    for i, c in enumerate(chosen):
        if isinstance(c, int) and not isinstance(c, bool) and by_id:
            if c not in by_id:
                raise ArgError(f"{name}.classes[{i}]", f"{c} is not a label id of {labels_from} "
                               f"(labels_from: ids {min(by_id)}..{max(by_id)}); give a class "
                               "it does not name by its folder name")
            if by_id[c] not in found:
                raise ArgError(f"{name}.classes[{i}]", f"label id {c} is {by_id[c]!r} in "
                               f"{labels_from} (labels_from) and no class folder bears that "
                               f"name (found: {', '.join(found)})")
            c = by_id[c]
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(found):
            c = found[c]
        if c not in found:
            raise ArgError(f"{name}.classes[{i}]", f"no class folder {c!r} (found: {', '.join(found)})")
        out.append(c)
    return out


def _class_ids(names: dict[str, list[str]], known: Mapping[str, int],
               labels_from: Any) -> dict[str, int]:
    """{class name: global id}: the `known` names (a model folder's) keep their ids, the new
    task's other classes follow. Known names none of the old task's
    folders bear would leave every old class on a row the base never trained, and an old
    folder the names lack (a typo) one class: refused."""
    old = names["old"]
    if known and not any(c in known for c in old):
        shown = ", ".join(list(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise ArgError("labels_from", f"{labels_from} names its classes ({shown}) and no old "
                       f"class folder ({', '.join(old[:5])}) is one of them, so the old task "
                       "would be measured on rows the base never trained; rename the folders "
                       "to the base's class names, or set data.args.labels_from: null to number "
                       "the folders in order")
    if strays := [c for c in old if known and c not in known]:  # a typo ('Bird'): a fresh row
        named = ", ".join(sorted(known, key=known.get))
        raise ArgError("labels_from", f"old class folder {strays[0]!r} is not one of the classes "
                       f"{labels_from} names ({named}), so the base has no row for it; rename "
                       "the folder to the base's class name, move it to the new task, or set "
                       "data.args.labels_from: null to number the folders in order")
    ids = dict(known)
    for c in old + names["new"]:
        if c not in ids:
            ids[c] = max(ids.values(), default=-1) + 1
    return ids


def imagefolder(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], size: Any = None,
                interpolation: str = "bilinear", augment: Any = None,
                crop_pct: float = 1.0, labels_from: str | None = None,
                crop_mode: str | None = None) -> dict[str, Task]:
    """Old and new tasks from image folders or tar shards; `size` resizes (the short side to
    size / crop_pct) and centre-crops; `augment` (timm's training transform) applies to
    training splits in the streaming loader; `labels_from`: a model folder whose class names
    keep their ids; `crop_mode`: timm's eval crop (center, the default; squash: both sides to
    size / crop_pct, the aspect not kept; border)."""
    hw = image_size(size)
    check_crop(crop_pct, crop_mode)
    augmenting = train_transform(augment, hw, interpolation)
    opened: dict[str, dict[str, Any]] = {}
    where: dict[tuple[str, str], str] = {}  # (task, split): its path
    for name, spec in (("old", old), ("new", new)):
        paths = task_paths(name, spec, ctx, "a class-per-folder directory or a .tar shard")
        opened[name] = {split: _open(path, f"{name}.{split}", hw, interpolation, crop_pct,
                                     crop_mode)
                        for split, path in paths.items()}
        where.update({(name, split): str(path) for split, path in paths.items()})
    read: dict[tuple, Any] = {}  # a folder two tasks name alike (a base's pretrain): read once
    known = known_from(labels_from, ctx.data_dir, None)
    names = {t: _selected(t, spec, list(_class_to_idx(opened[t]["train"])), known, labels_from)
             for t, spec in (("old", old), ("new", new))}
    ids = _class_ids(names, known, labels_from)
    by_id = {i: c for c, i in ids.items()}
    order = [by_id.get(i, f"LABEL_{i}") for i in range(max(ids.values()) + 1)]
    tasks = {}
    for t in ("old", "new"):
        splits, test_ids = {}, None
        for split, ds in opened[t].items():
            if split != "train":
                _same_classes(ds, opened[t]["train"], names[t], f"{t}.{split}")
            remap = {local: ids[c] for c, local in _class_to_idx(ds).items() if c in names[t]}
            samples = ImageSamples(ds, remap, f"{t}.{split}", hw,
                                   augmenting if split == "train" else None)
            # a caller that can stream (a training session) decides when to read a train split
            key = (where[t, split], split == "train", tuple(sorted(remap.items())))
            if split == "train" and ctx.lazy:
                splits[split] = samples
            else:
                splits[split] = read[key] if key in read else read.setdefault(key, samples.load())
            if split == "test":
                test_ids = samples.ids()
        tasks[t] = Task(t, "classification", splits["train"], splits["test"], len(order),
                        [ids[c] for c in names[t]], splits.get("val"), test_ids=test_ids,
                        label_names=order)  # the folders' names, by global id
    return tasks
