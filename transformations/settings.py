"""The converter's fixed parameters and the environment variables that tune it, in one place
so the CLI, the in-process API and the docs agree.
"""

from __future__ import annotations

BACKEND_ENV = "COG_PIPELINE_GDAL_BACKEND"
THREADS_ENV = "COG_PIPELINE_THREADS"
RESAMPLING_ENV = "COG_PIPELINE_RESAMPLING"
CACHEMAX_ENV = "COG_PIPELINE_CACHEMAX"
OVERVIEW_THREADS_ENV = "COG_PIPELINE_OVERVIEW_THREADS"
#: "gdal" (GDAL's JPEG driver), "pillow" or "auto" (Pillow with libjpeg-turbo when the preview fits; jpeg_pillow.py)
JPEG_ENCODER_ENV = "COG_PIPELINE_JPEG_ENCODER"

#: JPEG stores width and height in 16 bits.
JPEG_MAX_DIMENSION = 65535
JPEG_QUALITY = 80
COG_BLOCKSIZE = 512
#: Default GDAL block cache for one conversion (MB); the original tool used GDAL's
#: default (5 % of RAM). Bounded so that many jobs can share a worker.
DEFAULT_CACHEMAX_MB = 128
#: Default block cache (MB) of the parallel COG path, whose threads each stream through their
#: own rows: a smaller cache costs no time there and keeps peak memory below the original's.
PARALLEL_CACHEMAX_MB = 64
#: Block cache (MB) while a serialised JPEG preview is written (it reads lines in order).
JPEG_CACHEMAX_MB = 16
#: Niceness of the parallel COG path's full-resolution thread (Linux: per thread, inherited by
#: the GDAL worker threads it starts): the overview thread, the critical path, keeps a core,
#: and the full-resolution compression (2 threads) soaks up whatever time is left.
FULL_RES_THREAD_NICE = 5
#: Side of the decimated read used to choose the scaling of non-8-bit previews.
STATS_SAMPLE_SIZE = 1024

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
COMPLEX_TYPES = ("complex_int16", "complex_int32", "complex64", "complex128")
SUPPORTED_TYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)
