"""`python -m keras_bn_tools ...` is the `keras-bn-tools` command (`keras_bn_tools_cli.main`).

Python imports the package before it runs this module, and the package imports
Keras (so that its layers register with `keras.saving`), so TensorFlow's C++
start-up lines can reach stderr before `main` starts. Quieting them here would
take work at package import (reading `sys.argv` and redirecting stderr in
`keras_bn_tools/__init__.py`), which the package no longer does. The quiet forms
are the console script `keras-bn-tools` and `python -m keras_bn_tools_cli`: the
same `main`, run before anything heavy is imported.
"""

import sys

from keras_bn_tools_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
