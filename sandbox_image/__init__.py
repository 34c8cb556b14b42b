"""The slot server: one process per sandbox host, hosting N isolated workspaces ("slots").

Start it with `python -m sandbox_image --help`. Modules:

- `config`: `SlotLimits` (every per-slot limit and its default), command-line flags ->
  `ServerConfig`.
- `api`: the request models (pydantic), validated at the edge; body size caps.
- `isolation`: bubblewrap probing and argv building; the sandbox's default environment.
- `limits`: per-slot memory/pids cgroups (cgroup v1 or v2, rlimit fallback).
- `runner`: run one command with a timeout, output caps and whole-tree kill.
- `spawn`: start a command process (posix_spawn) and reap it (pidfd); terminal detach.
- `files`: path confinement, safe tar extraction, capped archives.
- `disks`, `mounts`: each slot's own size- and inode-limited filesystem (loop-mounted ext4
  in the server's private mount namespace).
- `slots`: the workspaces themselves (create, reset).
- `app`: the aiohttp routes and bearer-token auth.
"""

VERSION = "0.1.0"
