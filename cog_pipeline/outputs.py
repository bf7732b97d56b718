"""What a conversion job writes: the one declaration of its outputs.

A job reads one image and writes one file per entry of `OUTPUTS`, in this order: the converter's positional
arguments are the input, then each output (``generate_cog IN OUT.tif OUT.jpg``, transformations/cli.py, which
ships alone and does not import this). Everything else follows from the entries:

* the job's LFNs (``replicas.catalog.job_lfns``: ``ID0000001.tif``, ``ID0000001.jpg``), its arguments and
  declared outputs (``pegasus.workflow_gen``), and where each lands (``outputs.yml``: `Output.key_of`);
* the manifest's check that no two images write one object (``run.manifest.iter_parsed``);
* reconcile: a row is processed only when every output is there and written by this run;
* publishing: every output in provenance.jsonl, every output but the COG as an asset of the COG's STAC Item;
* the headers each output is uploaded with (``storage.media``).

Adding an output format is an entry here and the converter writing the file. A leaf module: it imports nothing
of the project, so every layer (storage included) can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What an input image's key ends in, in any case (USGS/Landsat products are `.TIF`).
IMAGE_SUFFIXES = (".tif", ".tiff")


def image_suffix(key: str) -> str | None:
    """The key's image suffix as written (`.TIF`, `.tiff`, ...), or None when it has none."""
    lower = key.lower()
    return next((key[-len(s):] for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)


def image_stem(key: str) -> str:
    """`a/b.TIF` -> `a/b`: the key without its image suffix (the JPEG and STAC Item are named after it)."""
    suffix = image_suffix(key)
    return key[: -len(suffix)] if suffix else key


@dataclass(frozen=True)
class Output:
    """One file every job writes."""

    name: str  # how publishing names it (ProcessedOutput.objects)
    label: str  # how a reason names it: "its preview a.jpg would overwrite line 3's"
    suffix: str | None  # None: written at the input's own key; else at the key's stem plus this
    lfn_suffix: str  # the job-local file: the job id plus this (ID0000001.jpg)
    media_type: str  # its Content-Type when uploaded, and its STAC asset's type
    stac_asset: str  # its asset's name in the COG's STAC Item
    stac_roles: tuple[str, ...]

    def key_of(self, key: str) -> str:
        """Where the job for the image at `key` writes this output (under the output prefix, if any)."""
        return key if self.suffix is None else image_stem(key) + self.suffix

    def lfn(self, job_id: str) -> str:
        return job_id + self.lfn_suffix


COG = Output("cog", "COG", None, ".tif", "image/tiff; application=geotiff; profile=cloud-optimized", "data", ("data",))
PREVIEW = Output("preview", "preview", ".jpg", ".jpg", "image/jpeg", "thumbnail", ("thumbnail",))

#: Every job's outputs, in the converter's argument order. The COG is the image itself: the report pictures it
#: and its STAC Item is made from it; the preview is what the local engine's worker pictures for the report.
OUTPUTS: tuple[Output, ...] = (COG, PREVIEW)


def declared() -> tuple[Output, ...]:
    """`OUTPUTS`, looked up at each call (so a test that declares another output reaches every reader)."""
    return OUTPUTS
