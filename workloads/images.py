"""OS images: which guest pages hold identical content across VMs booted from one image.

Scope: the boot-time layout of a guest's pages and the content keys of image pages.  A VM
of ``P`` pages booted from image ``I`` has three regions, in guest-page order:

* ``[0, n_image)``: the image's code and read-only data.  Page ``i`` has the same bytes in
  every VM booted from ``I`` (key derived from the run seed, the image name and ``i``);
  images of one *family* share the first ``family_overlap`` part of their pages.
* ``[n_image, n_image + n_zero)``: pages the guest zeroed at boot.
* the rest: private data, untouched until the workload writes it.

Not covered: access patterns (:mod:`workloads.patterns`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.content import ZERO_KEY, derived_keys, stable_hash64


@dataclass(frozen=True)
class ImageSpec:
    """A named guest OS image (user-definable in ``[[images]]``)."""

    name: str = field(metadata={"help": "image name that VMs refer to with `image`"})
    shared_fraction: float = field(
        default=0.4,
        metadata={"help": "fraction of the VM's pages that hold the image (identical per image)"},
    )
    zero_fraction: float = field(
        default=0.1, metadata={"help": "fraction of the VM's pages zeroed at boot"}
    )
    family: str = field(default="", metadata={"help": "images of one family overlap partly"})
    family_overlap: float = field(
        default=0.0, metadata={"help": "fraction of image pages identical across the family"}
    )

    def validate(self) -> list[str]:
        errs = []
        for key in ("shared_fraction", "zero_fraction", "family_overlap"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                errs.append(f"{key}: must be in [0, 1] (got {v})")
        if self.shared_fraction + self.zero_fraction > 1.0:
            errs.append("shared_fraction + zero_fraction must be <= 1")
        return errs


BUILTIN_IMAGES: dict[str, ImageSpec] = {
    "linux": ImageSpec("linux", shared_fraction=0.4, zero_fraction=0.1, family="linux"),
    "linux-old": ImageSpec(
        "linux-old", shared_fraction=0.4, zero_fraction=0.1, family="linux", family_overlap=0.5
    ),
    "windows": ImageSpec("windows", shared_fraction=0.3, zero_fraction=0.2, family="windows"),
    "blank": ImageSpec("blank", shared_fraction=0.0, zero_fraction=0.0),
}


@dataclass(frozen=True)
class BootLayout:
    """Where the image, zero and private regions of one guest lie (guest page numbers)."""

    n_pages: int
    n_image: int
    n_zero: int

    @property
    def data_start(self) -> int:
        return self.n_image + self.n_zero

    @classmethod
    def for_image(cls, image: ImageSpec, n_pages: int) -> BootLayout:
        n_image = int(image.shared_fraction * n_pages)
        n_zero = min(int(image.zero_fraction * n_pages), n_pages - n_image)
        return cls(n_pages=n_pages, n_image=n_image, n_zero=n_zero)


def image_keys(image: ImageSpec, seed: int, index: np.ndarray, n_image: int) -> np.ndarray:
    """Content keys of image pages ``index`` (same for every VM of the image)."""
    index = np.asarray(index, dtype=np.int64)
    own = derived_keys(stable_hash64("image", seed, image.name), index)
    if image.family and image.family_overlap > 0.0:
        fam = derived_keys(stable_hash64("family", seed, image.family), index)
        # The first `family_overlap` of the image's pages are the family's common pages.
        cut = int(image.family_overlap * n_image)
        own = np.where(index < cut, fam, own)
    return own


def boot_writes(image: ImageSpec, layout: BootLayout, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The writes a guest makes at boot: (guest pages, content keys)."""
    img = np.arange(layout.n_image, dtype=np.int64)
    zero = np.arange(layout.n_image, layout.data_start, dtype=np.int64)
    pages = np.concatenate([img, zero])
    keys = np.concatenate(
        [
            image_keys(image, seed, img, layout.n_image),
            np.full(len(zero), ZERO_KEY, dtype=np.uint64),
        ]
    )
    return pages, keys
