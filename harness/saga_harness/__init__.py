"""saga_harness: a whole saga system on the local control plane, and what runs on top of it.

* ``world`` / ``services`` / ``faults``: install the CRD, start the operator and the buy-video participants
  as supervised processes against a ``saga_testenv`` stack, and break them on purpose.
* ``manifests`` / ``messages`` / ``topics``: what the others share: the Saga manifests, made-up protocol
  messages, Kafka topics read back after the fact.
* ``demo``: ``make demo``.
* ``chaos``: ``make chaos``, many sagas while everything breaks, then an audit of the books (a package, one
  module per concern: its ``__init__`` lists them).
* ``bench``: ``make bench``, the operator against its floor (one module per measurement).

Development only: never in the product's wheel or image.
"""
