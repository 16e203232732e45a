"""tcpmq: a message broker speaking line-delimited JSON over TCP."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
