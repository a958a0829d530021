"""``python -m vlprompt ...`` = the ``vlprompt`` command (also ``torchrun -m vlprompt train ...``)."""

import sys

from vlprompt.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
