"""The Binance USD-M futures backend, in one package.

- ``model``: what Binance's answers mean, as values (pure; no I/O).
- ``client``: the signed HTTP client for the few endpoints used.
- ``lookup``: what became of an order, found by its client order id (rule 2's
  window), and ``RetryPolicy``, the bounds on every wait and resend.
- ``market``: the lot rules (``exchangeInfo``, cached) and the position an
  order is sized against.
- ``readahead``: the lookup and the position read, made during the permit
  wait and checked under the lease before they are used.
- ``preflight``: what ``apply-layer check`` reports for the exchange.
- ``close_size``: the close's side and quantity against the live position.
- ``adoption``: the lookups before a send (a resumed order, one Redis lost).
- ``send``: the journalled send loop, and what each failed send means.
- ``outcome``: a step's result from what the exchange said, logged once.
- ``executor``: places one reduce-only MARKET close, exactly once, through them.
"""
