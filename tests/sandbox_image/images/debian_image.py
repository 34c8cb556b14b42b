"""A small Debian base with working dpkg and apt, built from this machine's own files (no
network, no registry): what `FROM debian` gives a Dockerfile that runs
`apt-get install ./pkg.deb`. Plus `make_deb`, a tiny package built with dpkg-deb.

    built = build_debian_image(tmp / "debian")   # an OCI layout; `oci:<path>` names it
    deb = make_deb(tmp / "ctx", "hello-rollout", "/usr/bin/hello-rollout", "#!/bin/sh\\necho hi\\n")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .build import BuiltImage, Dir, Entry, build_oci_layout, host_binaries, host_files

TOOLS = ("sh", "bash", "rm", "tar", "diff", "cat", "ls", "mkdir", "mv", "cp", "ln", "chmod",
         "touch", "id", "chown", "sed", "grep", "find", "dd", "sleep", "head", "dpkg", "dpkg-deb",
         "dpkg-query", "dpkg-split", "dpkg-divert", "dpkg-trigger", "dpkg-maintscript-helper",
         "apt-get", "apt-config", "apt-cache", "/sbin/ldconfig", "/sbin/start-stop-daemon")


def system_layer() -> dict[str, Entry]:
    methods = sorted(str(p) for p in Path("/usr/lib/apt/methods").iterdir() if p.is_file())
    entries: dict[str, Entry] = {
        **host_files("/bin", "/lib", "/lib64", "/sbin"),
        **host_binaries(*TOOLS, *methods),
        **host_files("/usr/lib/apt/methods", "/etc/dpkg"),
        "proc": Dir(), "dev": Dir(), "tmp": Dir(0o1777), "root": Dir(0o700), "run": Dir(),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n"
                      b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "etc/apt/sources.list": b"",
        "etc/apt/apt.conf.d": Dir(), "etc/apt/preferences.d": Dir(), "etc/apt/sources.list.d": Dir(),
        "etc/apt/trusted.gpg.d": Dir(),
        "var/lib/dpkg/status": b"", "var/lib/dpkg/available": b"", "var/lib/dpkg/info": Dir(),
        "var/lib/dpkg/updates": Dir(), "var/lib/dpkg/triggers": Dir(), "var/lib/dpkg/alternatives": Dir(),
        "var/lib/apt/lists/partial": Dir(), "var/cache/apt/archives/partial": Dir(),
        "var/log/apt": Dir(), "usr/share/dpkg": Dir(),
    }
    for f in ("cputable", "tupletable", "ostable"):
        if os.path.exists(f"/usr/share/dpkg/{f}"):
            entries.update(host_files(f"/usr/share/dpkg/{f}"))
    return entries


def build_debian_image(dest: Path) -> BuiltImage:
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "DEBIAN_FRONTEND=noninteractive"], "Cmd": ["/bin/bash"]}
    return build_oci_layout(dest, [system_layer()], config, compress=None)


def make_deb(dest_dir: Path, name: str, path: str, script: str) -> Path:
    """A binary package `name` holding one executable at `path` (built with dpkg-deb)."""
    root = dest_dir / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: {arch}\nMaintainer: tests <t@localhost>\n"
        f"Description: a test package\n")
    exe = root / path.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text(script)
    exe.chmod(0o755)
    deb = dest_dir / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    shutil.rmtree(root)
    return deb
