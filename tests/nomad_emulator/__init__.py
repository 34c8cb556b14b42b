"""A Nomad HTTP API emulator for the `nomad` backend's tests (no Nomad binary can run here).

- `state.Cluster`: jobs, allocations (each a real local process, raw_exec semantics), nodes,
  the scheduler's rules and fault injection.
- `app.EmulatorServer`: the `/v1/...` API and a `/_emulator/...` control API.
- `python -m tests.nomad_emulator`: the same as a process (for launch.py end-to-end tests).
- `go_fields`: the Go `api` struct field names every JSON body is checked against.
"""
