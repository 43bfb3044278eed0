import sys

from hafrm.cli.main import main

sys.exit(main())
