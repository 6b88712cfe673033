"""The contract layer: what two sides of a seam share, and nothing that does the work on either side.

- `messages`: the Engine API's error texts, as dockerd words them (the control API raises them, the HTTP
  layer relays them);
- `dispatch`: what an agent and the dispatcher exchange (`Assignments`, `DispatcherAPI`, `COMPLETE`);
- `logs`: a task's log lines and what a reader asks for (`LogLine`, `LogOptions`);
- `attachments`: how a network attachment (a plain container's address on a swarm network) is told apart
  from a service task, for the allocator and the node's network agent alike;
- `node`: `NodeAPI`, what the Engine API server needs of a node, so the HTTP layer never imports the node.

Modules here import only the model and the small helpers below it (see scripts/layers.py).
"""
