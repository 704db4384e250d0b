"""Emulated devices that speak their vendors' real protocols and file formats, so that drivers
are tested through the vendors' own libraries (librealsense, OpenCV, the servo SDKs) rather than
against mocks of our own classes: what passes here is what the vendor's code accepts."""
