import sys

from queuelab.serve.cli import main

sys.exit(main())
