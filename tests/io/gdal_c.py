"""Reading what rasterio has no API for (category names, raster attribute tables)
straight from the GDAL library rasterio ships, through its C API, as gdalinfo does."""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import rasterio
import rasterio._io


def _library() -> ctypes.CDLL | None:
    folder = os.path.dirname(rasterio.__file__) + ".libs"
    found = sorted(glob.glob(os.path.join(folder, "libgdal*.so*")))
    if not found:
        return None
    lib = ctypes.CDLL(found[0])
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.GDALOpen.restype, lib.GDALOpen.argtypes = vp, [cp, ctypes.c_int]
    lib.GDALClose.argtypes = [vp]
    lib.GDALGetRasterBand.restype, lib.GDALGetRasterBand.argtypes = vp, [vp, ctypes.c_int]
    lib.GDALGetMetadata.restype, lib.GDALGetMetadata.argtypes = ctypes.POINTER(cp), [vp, cp]
    lib.GDALGetRasterCategoryNames.restype = ctypes.POINTER(cp)
    lib.GDALGetRasterCategoryNames.argtypes = [vp]
    lib.GDALGetDefaultRAT.restype, lib.GDALGetDefaultRAT.argtypes = vp, [vp]
    for name in ("GDALRATGetRowCount", "GDALRATGetColumnCount"):
        getattr(lib, name).argtypes = [vp]
    lib.GDALRATGetNameOfCol.restype, lib.GDALRATGetNameOfCol.argtypes = cp, [vp, ctypes.c_int]
    lib.GDALRATGetUsageOfCol.argtypes = [vp, ctypes.c_int]
    lib.GDALRATGetValueAsString.restype = cp
    lib.GDALRATGetValueAsString.argtypes = [vp, ctypes.c_int, ctypes.c_int]
    return lib


GDAL = _library()


def band_classes(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Band 1's category names, its default RAT as rows of {column: value}, and the
    RAT's column usages, as GDAL reads them from the file and its sidecars."""
    assert GDAL is not None
    ds = GDAL.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        band = GDAL.GDALGetRasterBand(ds, 1)
        GDAL.GDALGetMetadata(band, None)  # as gdalinfo: loads the PAM sidecar
        names_p = GDAL.GDALGetRasterCategoryNames(band)
        names: list[str] = []
        while names_p and names_p[len(names)]:
            names.append(names_p[len(names)].decode())
        rat = GDAL.GDALGetDefaultRAT(band)
        rows: list[dict[str, str]] = []
        usages: list[int] = []
        if rat:
            cols = GDAL.GDALRATGetColumnCount(rat)
            header = [GDAL.GDALRATGetNameOfCol(rat, c).decode() for c in range(cols)]
            usages = [GDAL.GDALRATGetUsageOfCol(rat, c) for c in range(cols)]
            for r in range(GDAL.GDALRATGetRowCount(rat)):
                values = [GDAL.GDALRATGetValueAsString(rat, r, c).decode() for c in range(cols)]
                rows.append(dict(zip(header, values, strict=True)))
        return names, rows, usages
    finally:
        GDAL.GDALClose(ds)
