"""The slot server: one process per sandbox host, hosting N isolated workspaces ("slots").

Start it with `python -m sandbox_image --help`. Modules:

- `config`: command-line flags -> `ServerConfig`.
- `isolation`: bubblewrap probing and argv building; the sandbox's default environment.
- `limits`: per-slot memory/pids limits (cgroup v1 or v2, rlimit fallback).
- `runner`: run one command with a timeout, output caps and whole-tree kill.
- `spawn`: start a command process (posix_spawn) and reap it (pidfd); terminal detach.
- `files`: path confinement, safe tar extraction, capped archives.
- `slots`: the workspaces themselves (create, reset).
- `app`: the aiohttp routes and bearer-token auth.
"""

VERSION = "0.1.0"
