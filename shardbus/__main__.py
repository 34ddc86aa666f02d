import sys

from shardbus.cli.main import main

sys.exit(main())
