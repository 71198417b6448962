"""NELS, a Never-Ending Learner of Sounds.

The public Python API is :class:`nels.Library`: one folder the user owns, which the CLI, the
website and the learning loop all go through.
"""
__version__ = "0.1.0"

SAMPLE_RATE = 16_000


def __getattr__(name):  # lazy: `import nels` must stay cheap for the CLI's --help
    if name == "Library":
        from nels.index.library import Library

        return Library
    raise AttributeError(name)
