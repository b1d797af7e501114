"""The benchmark behind `make bench` (issue 6): throughput, latency, API writes per step, memory at scale.

    python -m saga_harness.bench [--sagas 1000] [--concurrency 100] [--scale-sagas 5000] [--out DIR]

One run measures, against one API server and one Kafka broker (KUBECONFIG + KAFKA_BOOTSTRAP_SERVERS, the
local stack in ``.stack`` if it is up, or a fresh local stack started for the run and stopped after it):

1. the floor: raw status-subresource PATCHes from one async client, and a raw Kafka request/reply round
   trip through the same echo participant the sagas use;
2. K sagas of 3 steps at concurrency C through the real operator, with participants that reply at once;
3. N Sagas present when the operator starts (finished, running and pending): its memory, and the time
   until every unfinished one is resumed.

Modules: one per measurement, `floor`, `sagas` and `scale`, on what they share in `shared` (the run's
names and processes, the sagas and their happy-path statuses, reading topics back); `echo` (the fast
participant, a process of its own), `kube` (a lean aiohttp client for the driver), `procinfo` (CPU,
memory and machine facts from /proc), `stats`, `operator_internals` (the operator's unexported names the
benchmark uses, in one place), `cli` (orchestration, the printed table, the JSON under
harness/bench-results/).
See docs/performance.md for what each figure means.
"""
