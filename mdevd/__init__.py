"""mdevd: persistent mediated-device definitions, a D-Bus API, and the kernel glue between."""

__version__ = "0.1.0"
