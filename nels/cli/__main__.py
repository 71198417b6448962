"""`python -m nels.cli`: the same as the `nels` command."""
import sys

from nels.cli import main

sys.exit(main())
