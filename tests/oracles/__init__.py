"""Oracles: the numpy reference implementations the compiled kernels are tested against.

They are not runtime code (the package never imports them): the twin tests run one host
or VM on a kernel and its twin on the oracle, and compare every array.
"""
