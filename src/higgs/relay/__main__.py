import sys

from higgs.relay.cli import main

sys.exit(main())
