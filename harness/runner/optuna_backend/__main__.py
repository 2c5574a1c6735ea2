"""`python -m harness.runner.optuna_backend`: one worker process of an Optuna sweep."""

import sys

from harness.runner.optuna_backend.driver import main

sys.exit(main())
