/* A name-resolving client for test pods, linked statically against musl so it needs no NSS
 * (busybox-static's glibc getaddrinfo crashes in an image without NSS modules). musl's
 * resolver reads /etc/resolv.conf with search and ndots, and /etc/hosts, as pods expect.
 *
 *   lookup NAME              print each address NAME resolves to, one per line
 *   lookup NAME PORT [PATH]  then GET http://NAME:PORT/PATH from the first and print the body
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <arpa/inet.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: lookup NAME [PORT [PATH]]\n");
        return 2;
    }
    struct addrinfo hints = {0}, *res, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_CANONNAME;
    int rc = getaddrinfo(argv[1], argc > 2 ? argv[2] : NULL, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "lookup %s: %s\n", argv[1], gai_strerror(rc));
        return 1;
    }
    char buf[INET6_ADDRSTRLEN];
    for (ai = res; ai; ai = ai->ai_next) {
        void *a = ai->ai_family == AF_INET ? (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                           : (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        printf("%s\n", inet_ntop(ai->ai_family, a, buf, sizeof buf));
    }
    if (res->ai_canonname)
        printf("canonical %s\n", res->ai_canonname);
    if (argc < 3)
        return 0;
    int s = socket(res->ai_family, SOCK_STREAM, 0);
    struct timeval tv = {5, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, res->ai_addr, res->ai_addrlen) != 0) {
        perror("connect");
        return 1;
    }
    char req[512];
    snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", argc > 3 ? argv[3] : "", argv[1]);
    if (write(s, req, strlen(req)) < 0) {
        perror("write");
        return 1;
    }
    char out[4096];
    ssize_t n;
    while ((n = read(s, out, sizeof out)) > 0)
        fwrite(out, 1, n, stdout);
    return 0;
}
