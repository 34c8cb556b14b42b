"""The built host-view root: what of /etc it copies, and that a slot pays one mount for it."""

from __future__ import annotations

import os
import subprocess

from sandbox_image.host_view import HostView
from sandbox_image.isolation import Bubblewrap


def test_only_world_readable_etc_entries_are_copied(tmp_path) -> None:
    etc = tmp_path / "etc"
    (etc / "ssl" / "private").mkdir(parents=True)
    (etc / "ssl" / "private" / "host.key").write_text("secret key")
    (etc / "ssl" / "private").chmod(0o700)
    (etc / "ssl" / "certs").mkdir()
    (etc / "ssl" / "certs" / "ca.pem").write_text("cert")
    (etc / "ssl" / "certs" / "link.pem").symlink_to("/usr/share/ca/elsewhere.pem")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "gai.conf").write_text("private")
    (etc / "gai.conf").chmod(0o600)
    (tmp_path / "run-resolv").write_text("nameserver 10.0.0.1\n")
    (etc / "resolv.conf").symlink_to(tmp_path / "run-resolv")
    (etc / "hosts").symlink_to(tmp_path / "missing")  # dangling: left out
    (etc / "shadow").write_text("not in the list")

    view = HostView(tmp_path / "view", etc=str(etc))
    copied = tmp_path / "view" / "etc"
    assert sorted(os.listdir(copied)) == ["passwd", "resolv.conf", "ssl"]
    assert (copied / "passwd").read_text().startswith("root:")
    assert not (copied / "resolv.conf").is_symlink()  # its content, not a link out of the view
    assert (copied / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert sorted(os.listdir(copied / "ssl")) == ["certs"]  # no private/
    assert os.readlink(copied / "ssl" / "certs" / "link.pem") == "/usr/share/ca/elsewhere.pem"
    assert view.args[:3] == ["--ro-bind", view.path, "/"]

    HostView(tmp_path / "view", etc=str(tmp_path / "empty"))  # rebuilt from scratch
    assert os.listdir(copied) == []


def test_a_slot_sees_the_view_with_no_mount_per_etc_file(tmp_path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    bw = Bubblewrap("bwrap", network=False, hide=[])
    cmd = ("awk '{print $5}' /proc/self/mountinfo; echo ---; ls /; echo ---; "
           "head -c4 /etc/passwd; echo; touch /etc/x 2>/dev/null || echo ro; "
           "touch /w/ok && echo rw")
    out = subprocess.run(bw.argv(str(ws), "/w", "/w", cmd), capture_output=True, text=True,
                         timeout=30)
    mounts, top, rest = out.stdout.split("---\n")
    assert not [m for m in mounts.split() if m.startswith("/etc")], mounts
    assert "w" in top.split() and "root" not in top.split() and "work" not in top.split()
    assert rest.split() == ["root", "ro", "rw"], out.stderr
    assert not os.path.exists("/w")  # the mount point was made in the view, not on the host
