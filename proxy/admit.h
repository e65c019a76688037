/*
 * admit — the instance-wide client connection limits, shared by every
 * worker: max_connections (all client connections) and
 * max_connections_per_ip (per client address, the PROXY header's when a
 * listener takes one). A session takes its places once and gives them back
 * when it is freed.
 */
#ifndef IMAPMUX_ADMIT_H
#define IMAPMUX_ADMIT_H

#include <stdbool.h>

/* max_connections in effect: configured, or for auto (0) what the
 * open-files limit allows: two descriptors a session, 256 kept aside. */
unsigned admit_max_connections(unsigned configured);

/* One more client connection unless max (0 = none) are open. */
__attribute__((warn_unused_result)) bool admit_conn(unsigned max);
void admit_conn_done(void);

/* One more connection from ip unless it holds max (0 = no bound; then it
 * is not counted and needs no admit_ip_done). */
__attribute__((warn_unused_result)) bool admit_ip(const char *ip, unsigned max);
void admit_ip_done(const char *ip);

/* Free the address table (process exit, after the workers). */
void admit_shutdown(void);

#endif
