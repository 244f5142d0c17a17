"""Secure aggregation (SecAgg+) over the device API: the stages of a secure round as sub-rounds of it.

`tasks` builds a device's stage task at check-in, `stages` takes the JSON stage messages, `masked` checks
the masked input (the round's update upload), `errors` maps the protocol's refusals to problem documents.
The stage closes and the unmasking are the round engine's (coordinator/engine/secagg_stages.py,
secagg_sum.py). Everything a stage needs is in Postgres (storage/repositories/secagg.py)."""
