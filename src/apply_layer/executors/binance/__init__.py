"""The Binance USD-M futures backend, in one package.

- ``model``: what Binance's answers mean, as values (pure; no I/O).
- ``client``: the signed HTTP client for the few endpoints used.
- ``executor``: places one reduce-only MARKET close, exactly once.
"""
