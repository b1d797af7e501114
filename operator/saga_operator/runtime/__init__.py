"""The imperative shell: the coordinator, the reply pump, the deadline timer, probes, metrics, Kopf."""
