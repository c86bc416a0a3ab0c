/*
 * podnet: an LD_PRELOAD shim that gives a process on the local node the network view of a pod
 * without a network namespace. The node agent sets BATON_POD_IP for every container.
 *
 *  - bind() to 0.0.0.0 or 127.0.0.1 binds the pod IP instead, so every pod can listen on its
 *    database's standard port; bind() to :: fails with EADDRNOTAVAIL (IPv4-only pods), which
 *    servers treat as "no IPv6 here".
 *  - connect() to 127.0.0.1 reaches the pod IP ("localhost is the pod"), and an unbound IPv4
 *    socket is first bound to the pod IP, so peers see the pod's address, not 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static struct in_addr pod_ip;
static int have_pod_ip;
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);

__attribute__((constructor)) static void podnet_init(void) {
    real_bind = dlsym(RTLD_NEXT, "bind");
    real_connect = dlsym(RTLD_NEXT, "connect");
    const char *ip = getenv("BATON_POD_IP");
    have_pod_ip = ip && inet_pton(AF_INET, ip, &pod_ip) == 1;
}

static int is_any_or_localhost(struct in_addr a) {
    return a.s_addr == htonl(INADDR_ANY) || a.s_addr == htonl(INADDR_LOOPBACK);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    if (have_pod_ip && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in in = *(const struct sockaddr_in *)addr;
        if (is_any_or_localhost(in.sin_addr)) {
            in.sin_addr = pod_ip;
            return real_bind(fd, (const struct sockaddr *)&in, sizeof in);
        }
    }
    if (have_pod_ip && addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
    }
    return real_bind(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (have_pod_ip && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in to = *(const struct sockaddr_in *)addr;
        if (to.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) to.sin_addr = pod_ip;
        struct sockaddr_in self;
        socklen_t self_len = sizeof self;
        if (getsockname(fd, (struct sockaddr *)&self, &self_len) == 0 && self.sin_family == AF_INET &&
            self.sin_addr.s_addr == htonl(INADDR_ANY) && self.sin_port == 0) {
            struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0, .sin_addr = pod_ip};
            real_bind(fd, (const struct sockaddr *)&src, sizeof src); /* best effort */
        }
        return real_connect(fd, (const struct sockaddr *)&to, sizeof to);
    }
    return real_connect(fd, addr, len);
}
