"""`python -m komm_policy` is the `komm-policy` command."""

import sys

from .cli import main

sys.exit(main())
