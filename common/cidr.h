/*
 * cidr — address ranges ("192.0.2.0/24", "2001:db8::/32", a bare address
 * for one host) and whether a peer's address is in one: which hosts a
 * listener takes PROXY headers from (proxy_trusted). An IPv4-mapped IPv6
 * peer (::ffff:a.b.c.d) is matched as the IPv4 address it is.
 */
#ifndef IMAPMUX_CIDR_H
#define IMAPMUX_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
	int family;       /* AF_INET or AF_INET6 */
	uint8_t bits;     /* prefix length: 0..32 or 0..128 */
	uint8_t addr[16]; /* network order; bits past the prefix are zero */
};

/* One range from text[0..len) (no spaces). 0, or -1 when it is not one. */
__attribute__((warn_unused_result)) int cidr_parse(const char *text, size_t len, struct cidr *out);

/* A comma-separated list ("10.0.0.0/8, ::1": spaces around the commas
 * allowed) into a new array (*out, *n; free() it). 0; -1 with *bad the
 * first entry that is not a range (a pointer into list, *bad_len bytes)
 * or NULL on no memory. An empty list is an error too. */
__attribute__((warn_unused_result)) int
cidr_list_parse(const char *list, struct cidr **out, size_t *n, const char **bad, size_t *bad_len);

bool cidr_match(const struct cidr *c, const struct sockaddr *sa);
bool cidr_list_match(const struct cidr *list, size_t n, const struct sockaddr *sa);

#endif
