"""The executables workflow jobs run: the ``generate_cog`` converter, as modules with one job each.

``generate_cog`` in this folder is those modules built into one zipapp (``build.py``), so it can be
staged to a worker alone and run by the stock GDAL container's Python.
"""
