"""Readers and writers: the only package that imports rasterio, nibabel and zarr."""
