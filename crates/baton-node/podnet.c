/*
 * podnet: an LD_PRELOAD shim that gives a process on the local node the network view of a pod
 * without a network namespace. The node agent sets BATON_POD_IP for every container.
 *
 *  - bind() to 0.0.0.0 or 127.0.0.1 binds the pod IP instead, so every pod can listen on its
 *    database's standard port; bind() to :: fails with EADDRNOTAVAIL (IPv4-only pods), which
 *    servers treat as "no IPv6 here".
 *  - connect() to 127.0.0.1 reaches the pod IP ("localhost is the pod"), and an unbound IPv4
 *    socket is first bound to the pod IP, so peers see the pod's address, not 127.0.0.1.
 *  - connect() to a Service's ClusterIP:port listed in BATON_SERVICES
 *    ("10.0.0.1:443=127.0.0.1:6443,...") reaches its backend instead: kube-proxy's part, for
 *    the `kubernetes` Service an in-cluster client dials.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static struct in_addr pod_ip;
static int have_pod_ip;
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);

#define MAX_SERVICES 8
static struct {
    struct sockaddr_in from, to;
} services[MAX_SERVICES];
static int n_services;

/* "a.b.c.d:port" into an IPv4 socket address; 0 on success. */
static int parse_addr(const char *s, size_t len, struct sockaddr_in *out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *colon = strrchr(buf, ':');
    if (!colon) return -1;
    *colon = 0;
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535) return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((unsigned short)port);
    return inet_pton(AF_INET, buf, &out->sin_addr) == 1 ? 0 : -1;
}

static void parse_services(const char *list) {
    while (list && *list && n_services < MAX_SERVICES) {
        const char *end = strchr(list, ',');
        size_t len = end ? (size_t)(end - list) : strlen(list);
        const char *eq = memchr(list, '=', len);
        if (eq && parse_addr(list, (size_t)(eq - list), &services[n_services].from) == 0 &&
            parse_addr(eq + 1, len - (size_t)(eq - list) - 1, &services[n_services].to) == 0)
            n_services++;
        list = end ? end + 1 : NULL;
    }
}

__attribute__((constructor)) static void podnet_init(void) {
    real_bind = dlsym(RTLD_NEXT, "bind");
    real_connect = dlsym(RTLD_NEXT, "connect");
    const char *ip = getenv("BATON_POD_IP");
    have_pod_ip = ip && inet_pton(AF_INET, ip, &pod_ip) == 1;
    parse_services(getenv("BATON_SERVICES"));
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
        for (int i = 0; i < n_services; i++) {
            if (to.sin_addr.s_addr == services[i].from.sin_addr.s_addr &&
                to.sin_port == services[i].from.sin_port) {
                to = services[i].to;
                /* The backend is the host's (the API server), not the pod's own loopback. */
                goto dial;
            }
        }
        if (to.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) to.sin_addr = pod_ip;
    dial:;
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
