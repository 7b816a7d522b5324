import sys

from geo4d.cli import main

sys.exit(main())
