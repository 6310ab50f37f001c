import sys

from ftclip.cli import main

sys.exit(main())
