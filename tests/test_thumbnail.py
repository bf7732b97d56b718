"""The local worker's picture of a job: made from the job's JPEG preview with Pillow alone (thumbnail.py).

Real files throughout: previews written by Pillow, a COG written by GDAL (rasterio), the worker's own
``leave_thumbnail`` picking the job's outputs, and a fresh interpreter for what gets imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cog_pipeline.engines.local import JobSpec
from cog_pipeline.engines.local_worker import leave_thumbnail
from cog_pipeline.publishing.thumbnail import THUMB_PX, read_thumbnail, thumbnail_path, write_thumbnail

from . import rasters
from .conftest import REPO_ROOT


def _preview(path: Path, width: int, height: int, mode: str = "RGB", colour: tuple[int, ...] | int | None = None) -> Path:
    """A JPEG like the converter's preview: textured content, or one flat colour when ``colour`` is given."""
    if colour is None:
        bands = 3 if mode == "RGB" else 1
        data = np.moveaxis(rasters.textured(bands, height, width), 0, -1)
        img = Image.fromarray(np.ascontiguousarray(data if bands == 3 else data[..., 0]))
    else:
        img = Image.new(mode, (width, height), colour)
    img.save(path, format="JPEG", quality=80)
    return path


def _spec(tmp_path: Path, outputs: dict[str, str]) -> JobSpec:
    jobs = tmp_path / "run" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    return JobSpec(
        job_id="ID0000001", executable="generate_cog", arguments=[], input_bucket="in", output_bucket="out",
        inputs={}, outputs=outputs, attempts=1, metadata={}, store={}, scratch_root=str(tmp_path / "scratch"),
        log_path=str(jobs / "ID0000001.log"),
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_workers_picture_is_made_from_the_preview_not_the_cog(tmp_path: Path) -> None:
    """The job's COG is textured grey-ish imagery, its preview flat red: the picture the worker leaves is red."""
    work = tmp_path / "work"
    work.mkdir()
    rasters.write(work / "a b#1.tif", rasters.textured(3, 300, 400))
    _preview(work / "a b#1.jpg", 400, 300, colour=(220, 20, 20))
    spec = _spec(tmp_path, {"a b#1.tif": "x/a b#1.tif", "a b#1.jpg": "x/a b#1.jpg"})
    leave_thumbnail(spec, work)
    data = read_thumbnail(thumbnail_path(Path(spec.log_path).parent, spec.job_id))
    assert data is not None
    with Image.open(thumbnail_path(Path(spec.log_path).parent, spec.job_id)) as img:
        r, g, b = (float(np.asarray(img)[..., i].mean()) for i in range(3))
    assert r > 200 and g < 40 and b < 40


def test_the_picture_fits_thumb_px_and_keeps_the_aspect(tmp_path: Path) -> None:
    dest = tmp_path / "p.thumb.jpg"
    assert write_thumbnail(_preview(tmp_path / "wide.jpg", 1000, 400), dest)
    with Image.open(dest) as img:
        assert img.size == (THUMB_PX, round(THUMB_PX * 400 / 1000))
    assert write_thumbnail(_preview(tmp_path / "tall.jpg", 300, 2000), dest)
    with Image.open(dest) as img:
        assert img.size == (round(THUMB_PX * 300 / 2000), THUMB_PX)


def test_a_preview_smaller_than_thumb_px_is_not_enlarged(tmp_path: Path) -> None:
    dest = tmp_path / "p.thumb.jpg"
    assert write_thumbnail(_preview(tmp_path / "small.jpg", 120, 50), dest)
    with Image.open(dest) as img:
        assert img.size == (120, 50)


def test_grey_stays_grey_and_rgb_stays_rgb(tmp_path: Path) -> None:
    for mode in ("L", "RGB"):
        dest = tmp_path / f"{mode}.thumb.jpg"
        assert write_thumbnail(_preview(tmp_path / f"{mode}.jpg", 500, 300, mode=mode), dest)
        with Image.open(dest) as img:
            assert img.format == "JPEG" and img.mode == mode


def test_the_preview_is_decoded_dct_scaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview over Pillow's decompression-bomb limit at full size is pictured, since libjpeg decodes it at
    1/8 (under the limit); Image.open alone would refuse it."""
    preview = _preview(tmp_path / "big.jpg", 2400, 1600, mode="L")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 3.84 M pixels full size, 60 000 at 1/8
    with pytest.raises(Image.DecompressionBombError):
        Image.open(preview)
    dest = tmp_path / "big.thumb.jpg"
    assert write_thumbnail(preview, dest)
    with Image.open(dest) as img:
        assert img.size == (THUMB_PX, 128)


def test_a_preview_too_large_even_scaled_gets_no_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preview = _preview(tmp_path / "big.jpg", 2400, 1600, mode="L")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # under even the 1/8 decode's 300 x 200
    dest = tmp_path / "big.thumb.jpg"
    assert write_thumbnail(preview, dest) is False
    assert _leftovers(tmp_path) == ["big.jpg"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "not a jpeg", "empty"])
def test_no_preview_no_picture_and_nothing_left(tmp_path: Path, damage: str) -> None:
    """A missing or damaged preview: False, and neither the picture nor its temporary is left behind."""
    src = tmp_path / "in"
    src.mkdir()
    preview = src / "p.jpg"
    if damage != "missing":
        whole = _preview(tmp_path / "whole.jpg", 600, 400).read_bytes()
        preview.write_bytes({"truncated": whole[: len(whole) // 2], "not a jpeg": b"II*\x00" + whole[4:], "empty": b""}[damage])
    out = tmp_path / "jobs"
    out.mkdir()
    assert write_thumbnail(preview, out / "ID1.thumb.jpg") is False
    assert _leftovers(out) == []


def test_a_job_without_a_preview_leaves_no_picture(tmp_path: Path) -> None:
    """Only the COG among the outputs (a transformation that makes no JPEG): no picture, the report reads the COG."""
    work = tmp_path / "work"
    work.mkdir()
    rasters.write(work / "a.tif", rasters.textured(1, 64, 64))
    spec = _spec(tmp_path, {"a.tif": "a.tif"})
    leave_thumbnail(spec, work)
    assert _leftovers(Path(spec.log_path).parent) == []


def test_writing_a_picture_from_a_preview_imports_neither_numpy_nor_rasterio(tmp_path: Path) -> None:
    preview = _preview(tmp_path / "p.jpg", 900, 600)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cog_pipeline.publishing.thumbnail import write_thumbnail\n"
        f"assert write_thumbnail(Path({str(preview)!r}), Path({str(tmp_path / 'p.thumb.jpg')!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'rasterio')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert (tmp_path / "p.thumb.jpg").read_bytes()[:2] == b"\xff\xd8"
