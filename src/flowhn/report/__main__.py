import sys

from flowhn.report.cli import main

sys.exit(main())
