import sys

from repgeom.provenance.cli import main

sys.exit(main())
