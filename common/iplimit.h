/*
 * iplimit — how many connections each client address holds, with a bound.
 *
 * A chained hash table from address text ("192.0.2.7", "2001:db8::1") to a
 * count; an entry exists only while its count is above zero, so the table
 * holds at most one entry per connected address. The hash is keyed with a
 * random seed (an attacker picking addresses cannot flood one chain).
 * Not thread-safe: the caller serialises (proxy/admit.c holds a mutex).
 */
#ifndef IMAPMUX_IPLIMIT_H
#define IMAPMUX_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>

struct iplimit;

/* nbuckets > 0 (rounded up to a power of two). NULL on OOM. */
struct iplimit *iplimit_new(size_t nbuckets, uint64_t seed);
void iplimit_destroy(struct iplimit **lp);

/* Count one more connection of ip unless it holds max already (max 0 =
 * no bound). 0 counted; -1 refused (at the bound, or out of memory). */
__attribute__((warn_unused_result)) int iplimit_take(struct iplimit *l, const char *ip,
                                                     unsigned max);

/* One connection of ip ended (it must have been counted). */
void iplimit_release(struct iplimit *l, const char *ip);

/* Connections of ip now; addresses held. */
unsigned iplimit_count(const struct iplimit *l, const char *ip);
size_t iplimit_addresses(const struct iplimit *l);

#endif
