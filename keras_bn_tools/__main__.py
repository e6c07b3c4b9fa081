"""`python -m keras_bn_tools ...` is the `keras-bn-tools` command."""

import sys

from keras_bn_tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
