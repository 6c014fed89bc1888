import sys

try:
    from tb_lazy.cli import main
except ModuleNotFoundError as missing:  # run with an interpreter that lacks the project's dependencies
    print(
        f"tb-lazy: error: {sys.executable} can't import {missing.name!r}; use the project's environment "
        f"(.venv/bin/tb-lazy, or .venv/bin/python -m tb_lazy) or install it: {sys.executable} -m pip install -e .",
        file=sys.stderr,
    )
    sys.exit(2)

sys.exit(main())
