"""NELS, a Never-Ending Learner of Sounds.

The public Python API is :class:`nels.Library`: one folder the user owns, which the CLI, the
website and the learning loop all go through.
"""
import os

# NELS's numpy work is many small matrix products (a 197x257 spectrogram times a 257x64 filterbank);
# a multi-threaded OpenBLAS spends 50x longer waking threads than computing them, and worse when
# the cores are busy. Set before numpy loads; a user's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import nels` must stay cheap for the CLI's --help
    if name == "Library":
        from nels.library import Library

        return Library
    raise AttributeError(name)
