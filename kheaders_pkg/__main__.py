import sys

from kheaders_pkg.entry import main

sys.exit(main())
