"""The ``generate_cog`` converter, as modules with one job each, built into one zipapp (``build.py``) that is
staged to a worker alone and run by the stock GDAL container's Python."""
