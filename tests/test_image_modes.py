"""Image folders of mixed modes become 8-bit RGB as the pixels say: a 16-bit greyscale PNG keeps
its top 8 bits (PIL's own conversion turned every value over 255 white)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from goodfit_cli.data import build_data


def test_a_16_bit_png_among_8_bit_images_keeps_its_grey(tmp_path):
    for split in ("tr", "te"):
        for c, v in (("a", 30000), ("b", 65535)):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.full((4, 4), v, np.uint16)).save(tmp_path / split / c / "x.png")
        Image.new("L", (4, 4), 117).save(tmp_path / split / "a" / "y.png")
        Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / split / "b" / "y.png")
    assert Image.open(tmp_path / "tr" / "a" / "x.png").mode == "I;16"
    spec = {"train": str(tmp_path / "tr"), "test": str(tmp_path / "te")}
    test = build_data("imagefolder", {"old": spec, "new": spec}, seed=0, data_dir=None)["old"].test
    assert test.x.dtype.is_floating_point is False and test.x.shape == (4, 4, 4, 3)
    assert [x[0, 0].tolist() for x in test.x] == [[117] * 3, [117] * 3, [255] * 3, [10, 20, 30]]
