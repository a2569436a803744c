"""kheaders-pkg: headers in /lib/modules/$KVER/build that match the running kernel."""

__version__ = "0.1.0"
