"""Scripts that measure (``python -m benchmarks.NAME --help``); never imported by the packages.

They are not part of the wheel or the serving image. Each prints figures; none is a test.
"""
