/* The USER of a Dockerfile RUN step: run as root of the build's user namespace, bubblewrap
   execs this (static, bound read-only at /dev/.build-user) to become UID:GID (its capabilities
   go with the switch) and exec the command. Built once per host (build_sandbox.py). */
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s UID GID COMMAND...\n", argv[0]); return 125; }
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    if (setgroups(1, &gid) || setgid(gid) || setuid((uid_t)strtoul(argv[1], NULL, 10))) {
        perror("build-user: switching user"); return 125;
    }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
