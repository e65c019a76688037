/*
 * tickets — TLS 1.3 ticket keys shared by a fleet through Redis.
 *
 * Every instance with the same [redis] prefix and tls_ticket_lifetime
 * seals tickets with the same keys (tktkeys.h), so a client resumes on any
 * of them. Worker 0 keeps them in step:
 *
 *   SET  PREFIXticketkey:LIFETIME:E   <80 random bytes> NX EX 3*LIFETIME
 *   SET  PREFIXticketkey:LIFETIME:E+1 <80 random bytes> NX EX 3*LIFETIME
 *   MGET PREFIXticketkey:LIFETIME:E-1 ...:E ...:E+1  --> tktkeys_put
 *
 * The first instance's SET of an epoch wins and every instance reads the
 * winner's key, one epoch ahead of its use. Again after a quarter of the
 * lifetime (at most 5 minutes); every second while Redis is down or has not
 * given the current key; every 5 minutes while tls_tickets = no (a reload
 * may turn it on). Until then, and without [redis], tktkeys makes
 * keys of its own: tickets then open on this instance only.
 */
#ifndef IMAPMUX_TICKETS_H
#define IMAPMUX_TICKETS_H

struct worker;

/* Worker w's loop thread; nothing happens but on worker 0 with Redis. */
void tickets_start(struct worker *w);
void tickets_stop(struct worker *w);

#endif
