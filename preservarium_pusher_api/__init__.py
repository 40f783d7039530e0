"""Preservarium Pusher: the HTTP door through which lab software commands lab devices."""

__version__ = "0.1.0"
