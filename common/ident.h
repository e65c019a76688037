/*
 * ident — who a client is, for the proxy's own bookkeeping: the user name
 * as imapmux compares it, the address group a client is counted under, and
 * the Redis keys built from either.
 *
 *   "Bob@Example.ORG"  --ident_user_norm(fold)--> "bob@example.org"
 *   "2001:db8::1:2"    --ident_ip_group(64)-----> "2001:db8::/64"
 *   prefix "imapmux:" + kind "authfail:user:" + id --ident_key--> the key
 *
 * Pure functions on caller-owned memory: no allocation, no I/O. Every
 * output is bounded by its inputs and checked against the room given, so
 * that no configuration (prefix length) and no client input (user name,
 * PROXY-protocol address) can write past a buffer.
 */
#ifndef IMAPMUX_IDENT_H
#define IMAPMUX_IDENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest user name the proxy accepts (RFC 3501 has no bound; Dovecot's
 * default auth limits are shorter). */
#define IDENT_USER_MAX 255
/* Room for any address group text, NUL included ("ffff:...:ffff/128"). */
#define IDENT_IP_MAX 50
/* Longest key kind the proxy uses ("authfail:user:"), with room to spare. */
#define IDENT_KIND_MAX 32
/* Room for any key ident_key builds from a prefix of up to prefix_max
 * bytes and an id of up to IDENT_USER_MAX bytes, NUL included. */
#define IDENT_KEY_ROOM(prefix_max) ((prefix_max) + IDENT_KIND_MAX + IDENT_USER_MAX + 1)

/*
 * Copy in[0..len) to out (room for len bytes; in == out allowed), ASCII
 * letters lowered when fold (Dovecot's %Lu: only A-Z change, every other
 * byte, UTF-8 included, is kept).
 */
void ident_user_norm(const uint8_t *in, size_t len, bool fold, uint8_t *out);

/*
 * The group an address is counted under: an IPv6 address (textual, as
 * inet_ntop writes it) becomes its first v6_prefix bits, written as
 * "net/len" ("2001:db8:1:2::/64"; v6_prefix 128 gives the address itself);
 * an IPv4-mapped IPv6 address is taken as the IPv4 address it maps; IPv4
 * and anything else ("local") is copied as is. v6_prefix 1..128.
 * Returns 0, or -1 when out (cap bytes, NUL included) is too small or
 * v6_prefix is out of range (out is then "").
 */
__attribute__((warn_unused_result)) int ident_ip_group(const char *ip, unsigned v6_prefix,
                                                       char *out, size_t cap);

/*
 * Build prefix + kind + id[0..idlen) into out (cap bytes) and NUL-terminate
 * it; id is binary-safe (the key is passed to Redis as one argument, never
 * spliced into a command line). Returns 0 with *len_r set (the key's length
 * without the NUL), or -1 when it does not fit (out is then "" when cap > 0).
 */
__attribute__((warn_unused_result)) int ident_key(char *out, size_t cap, const char *prefix,
                                                  const char *kind, const uint8_t *id, size_t idlen,
                                                  size_t *len_r);

#endif
