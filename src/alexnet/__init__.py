"""alexnet: the reference implementation of Krizhevsky, Sutskever and Hinton (NIPS 2012)."""

__version__ = "0.1.0"
