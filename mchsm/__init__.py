"""mchsm: an open multi-context hardware security module and the software around it."""

__version__ = "0.1.0"
