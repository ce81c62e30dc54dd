"""``python -m locmoe.train CONFIG [--with FRAGMENT] [--set k=v] [--resume]``: the same as ``locmoe train``,
for launchers (torchrun, msrun) that start a module rather than a console script."""

import sys

from locmoe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
