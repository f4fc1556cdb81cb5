"""setuptools entry for the C parts (built through cffi at install time); metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["libos/shm/_ring_build.py:ffibuilder"])
