import sys

from tuneloop.cli.main import main

sys.exit(main())
