import sys

from kheaders_pkg.cli import main

sys.exit(main())
