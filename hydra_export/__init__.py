"""hydra-export: the build side (torch) of the Hydra speculative-decoding toolchain."""

__version__ = "0.1.0"
