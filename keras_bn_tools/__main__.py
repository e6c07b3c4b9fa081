"""`python -m keras_bn_tools ...` is the `keras-bn-tools` command (`keras_bn_tools_cli.main`)."""

import sys

from keras_bn_tools_cli import main

if __name__ == "__main__":
    sys.exit(main())
