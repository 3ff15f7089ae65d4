"""Drivers: how a profile's isolated stack is built on one operating system."""
