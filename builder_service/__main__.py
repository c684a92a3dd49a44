"""`python -m builder_service serve|build|convert`."""

import sys

from builder_service.cli import main

sys.exit(main())
