import sys

from tb_lazy.cli import main

sys.exit(main())
