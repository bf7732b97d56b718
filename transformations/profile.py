"""The conversion profile: every choice that shapes the outputs, declared once and recorded in the provenance.

Fields are overridden by name (``--profile compress=DEFLATE``, env ``COG_PIPELINE_PROFILE``, ``[profile]`` in
the configuration; docs/conversion.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Iterable, Optional

#: How the preview chooses its bands: "rgb" takes the first three non-alpha bands (else the first one,
#: grey; a palette is expanded), "first" always the first band (grey).
BAND_RULES = ("rgb", "first")


@dataclass(frozen=True)
class Profile:
    compress: str = "LZW"
    #: "YES": horizontal differencing, floating-point predictor for float data (lossless)
    predictor: str = "YES"
    blocksize: int = 512
    #: GDAL overview resampling; "" is the COG driver's own default (what the original tool used)
    overview_resampling: str = ""
    jpeg_quality: int = 80
    preview_bands: str = "rgb"

    def creation_options(self, threads: int) -> Dict[str, str]:
        """The COG driver's creation options."""
        options = {"COMPRESS": self.compress, "PREDICTOR": self.predictor, "BLOCKSIZE": str(self.blocksize),
                   "BIGTIFF": "IF_SAFER", "NUM_THREADS": str(threads)}
        if self.overview_resampling:
            options["OVERVIEW_RESAMPLING"] = self.overview_resampling
        return options

    def as_metadata(self) -> Dict[str, str]:
        """The profile as provenance items (``PROFILE_COMPRESS=LZW``, ...)."""
        return {f"PROFILE_{k.upper()}": str(v) or "default" for k, v in asdict(self).items()}


DEFAULT = Profile()
FIELDS = {f.name: f.type for f in fields(Profile)}


def with_overrides(items: Iterable[str], base: Optional[Profile] = None) -> Profile:
    """``base`` with ``NAME=VALUE`` overrides; ValueError naming the first bad one."""
    profile = base or DEFAULT
    for item in items:
        name, sep, value = str(item).partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in FIELDS:
            raise ValueError(f"profile setting {item!r}: expected NAME=VALUE, NAME one of {', '.join(FIELDS)}")
        if FIELDS[name] == "int":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"profile setting {name}={value!r}: expected a positive integer")
            profile = replace(profile, **{name: int(value)})
        else:
            profile = replace(profile, **{name: value.upper() if name in ("compress", "predictor") else value})
    if profile.preview_bands not in BAND_RULES:
        raise ValueError(f"profile setting preview_bands={profile.preview_bands!r}: use one of {', '.join(BAND_RULES)}")
    if not 1 <= profile.jpeg_quality <= 100:
        raise ValueError(f"profile setting jpeg_quality={profile.jpeg_quality}: expected 1..100")
    if profile.blocksize % 16:
        raise ValueError(f"profile setting blocksize={profile.blocksize}: expected a multiple of 16")
    return profile
