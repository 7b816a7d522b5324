import sys

from geo4d_cli import main

sys.exit(main())
