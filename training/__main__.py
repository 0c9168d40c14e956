"""``python -m training ...`` is ``recsys ...``: the form ``torchrun -m training train ...`` starts."""

import sys

from training.cli.main import main

sys.exit(main())
