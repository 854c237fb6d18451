/*
 * vsock-hello: the rig's smallest guest program. It connects AF_VSOCK to the host (CID 2) on the
 * given port, retrying while nobody listens (a guest connect to an unbound port times out after
 * about 2 s under vhost-device-vsock), sends one line carrying the burn and idle cgroups'
 * usage_usec, reads the host's one-line answer and exits. It proves the rig (kernel, modules,
 * vhost-user vsock, cgroup2) before the real agent exists.
 *
 * Build: gcc -static -O2 -o vsock-hello vsock-hello.c
 * Usage: vsock-hello <port> [attempts]
 *        vsock-hello --connect vsock://2:<port> [ignored agent flags...]
 *        vsock-hello --wait-stop <port>
 * The second form accepts the guest agent's command line, so the probe can stand in for the
 * agent under its systemd unit (scripts/debian) and check that the unit's sandbox allows AF_VSOCK.
 * The third form is the rig's stop switch: it listens on the guest's vsock <port>, and returns
 * once the host connects (through vhost-device-vsock: `CONNECT <port>` on <dir>/vm.vsock), so
 * the host ends a measurement when it has seen enough, whatever the emulation speed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static long long usage_usec(const char *cgroup) {
    char path[256];
    snprintf(path, sizeof path, "/sys/fs/cgroup/%s/cpu.stat", cgroup);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char key[64];
    long long value, found = -1;
    while (fscanf(f, "%63s %lld", key, &value) == 2) {
        if (strcmp(key, "usage_usec") == 0) { found = value; break; }
    }
    fclose(f);
    return found;
}

static int wait_stop(unsigned port) {
    struct sockaddr_vm addr = {
        .svm_family = AF_VSOCK,
        .svm_cid = VMADDR_CID_ANY,
        .svm_port = port,
    };
    int srv = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (srv < 0) { perror("vsock-hello: socket"); return 1; }
    if (bind(srv, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("vsock-hello: bind"); return 1; }
    if (listen(srv, 1) != 0) { perror("vsock-hello: listen"); return 1; }
    int fd = accept(srv, NULL, NULL);
    if (fd < 0) { perror("vsock-hello: accept"); return 1; }
    (void)write(fd, "stopping\n", 9);
    close(fd);
    close(srv);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--wait-stop") == 0) {
        return wait_stop((unsigned)strtoul(argv[2], NULL, 10));
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s <port> [attempts]\n", argv[0]);
        return 2;
    }
    unsigned port;
    int attempts = 10;
    if (strcmp(argv[1], "--connect") == 0) {
        const char *colon = argc > 2 ? strrchr(argv[2], ':') : NULL;
        if (!colon || strncmp(argv[2], "vsock://2:", 10) != 0) {
            fprintf(stderr, "vsock-hello: --connect wants vsock://2:<port>\n");
            return 2;
        }
        port = (unsigned)strtoul(colon + 1, NULL, 10);
        attempts = 60;
    } else {
        port = (unsigned)strtoul(argv[1], NULL, 10);
        if (argc > 2) attempts = atoi(argv[2]);
    }
    struct sockaddr_vm addr = {
        .svm_family = AF_VSOCK,
        .svm_cid = VMADDR_CID_HOST,
        .svm_port = port,
    };
    int fd = -1;
    for (int i = 1; i <= attempts; i++) {
        fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (fd < 0) { perror("vsock-hello: socket"); return 1; }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) break;
        fprintf(stderr, "vsock-hello: connect attempt %d: %s\n", i, strerror(errno));
        close(fd);
        fd = -1;
        sleep(1);
    }
    if (fd < 0) return 1;
    sleep(1); /* let the burn loop accumulate a little CPU before reading the counters */
    char line[256];
    int n = snprintf(line, sizeof line, "hello from guest burn_usec=%lld idle_usec=%lld\n",
                     usage_usec("burn"), usage_usec("idle"));
    if (write(fd, line, (size_t)n) != n) { perror("vsock-hello: write"); return 1; }
    /* The host answers with one line; framing by newline, never by EOF (vhost-device-vsock 0.3.0
     * does not pass a guest half-close on). */
    char reply[256];
    size_t got = 0;
    while (got < sizeof reply - 1) {
        ssize_t r = read(fd, reply + got, 1);
        if (r <= 0) break;
        got += (size_t)r;
        if (reply[got - 1] == '\n') break;
    }
    reply[got] = '\0';
    printf("vsock-hello: host replied: %s", reply);
    close(fd);
    return 0;
}
